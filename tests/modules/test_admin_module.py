"""chat-admin module in process (legacy-api.md §5, §6 chat-admin), on MySQL and SQLite.

Every test runs twice: on a fresh MariaDB database with schema.sql, and on a SQLite file
the module creates itself.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator

import pytest
from test_admin_helpers import JS_ISO, JSON_CT, Api, create_mysql_schema, run_admin

from modules.admin.db import normalise_url

Scenario = Callable[[Api], object]


@pytest.fixture(params=["mysql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/admin.db"
        return
    name = request.getfixturevalue("mysql_database")()
    yield create_mysql_schema(request.config, name)


def err(r: object, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)  # type: ignore[attr-defined]
    assert r.headers["content-type"] == JSON_CT  # type: ignore[attr-defined]
    assert r.json()["error"]["code"] == code, r.text  # type: ignore[attr-defined]


def tick() -> object:
    """Let the millisecond clock move on, so that updatedAt changes are visible."""
    return asyncio.sleep(0.01)


# --------------------------------------------------------------------------- auth, paths


def test_roles_customer_forbidden_agent_reads_admin_writes(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        for path in ("/api/admin/users", "/api/admin/stats", "/api/admin/conversations"):
            err(await api.call("GET", path, role="customer"), 403, "forbidden")
            assert (await api.call("GET", path, role="agent")).status_code == 200
        err(
            await api.call("POST", "/api/admin/teams", {"name": "x"}, role="agent"),
            403,
            "forbidden",
        )
        err(await api.call("DELETE", "/api/admin/teams/1", role="agent"), 403, "forbidden")
        err(await api.call("GET", "/api/admin/users", role=None), 401, "unauthorized")
        r = await api.call("GET", "/api/admin/users", headers={"Authorization": "bearer x"})
        err(r, 401, "unauthorized")
        assert (await api.call("POST", "/api/admin/teams", {"name": "x"})).status_code == 201

    run_admin(db_url, scenario)


def test_unknown_path_or_method_is_404_before_auth(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        err(await api.call("GET", "/api/admin/nope", role=None), 404, "not_found")
        err(await api.call("PUT", "/api/admin/users", role=None), 404, "not_found")
        err(await api.call("POST", "/api/admin/conversations", {}, role=None), 404, "not_found")
        # One trailing slash is tolerated.
        assert (await api.call("GET", "/api/admin/users/")).status_code == 200
        assert (await api.call("GET", "/health", role=None)).json() == {
            "status": "ok",
            "service": "chat-admin",
        }

    run_admin(db_url, scenario)


def test_non_digit_path_id_is_404_after_auth(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/teams", {"name": "t"}, 201)
        for raw in ("abc", "1abc", "-1", "0", "1.0", "9007199254740993"):
            err(await api.call("GET", f"/api/admin/teams/{raw}"), 404, "not_found")
        err(await api.call("GET", "/api/admin/teams/abc", role=None), 401, "unauthorized")
        assert (await api.call("GET", "/api/admin/teams/001")).json()["id"] == 1

    run_admin(db_url, scenario)


def test_check_order_role_then_size_then_body_then_ref_then_404_then_409(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/teams", {"name": "a"}, 201)
        await api.ok("POST", "/api/admin/teams", {"name": "b"}, 201)
        big = b'{"name": "' + b"x" * 1_048_576 + b'"}'
        r = await api.call("PATCH", "/api/admin/teams/1", role="agent", content=big)
        err(r, 403, "forbidden")
        err(await api.call("PATCH", "/api/admin/teams/99", content=big), 413, "payload_too_large")
        err(await api.call("PATCH", "/api/admin/teams/99", content=b"{"), 400, "bad_request")
        err(await api.call("PATCH", "/api/admin/teams/99", content=b"[]"), 400, "bad_request")
        err(await api.call("PATCH", "/api/admin/teams/99", {"name": 5}), 400, "bad_request")
        err(await api.call("PATCH", "/api/admin/users/99", {"teamId": 99}), 400, "bad_request")
        err(await api.call("PATCH", "/api/admin/teams/99", {"name": "a"}), 404, "not_found")
        err(await api.call("PATCH", "/api/admin/teams/2", {"name": "A"}), 409, "conflict")
        # An empty or whitespace body is {} (PATCH with nothing: only updatedAt moves).
        assert (await api.call("PATCH", "/api/admin/teams/2", content=b" \n")).status_code == 200
        err(await api.call("POST", "/api/admin/teams", content=b""), 400, "bad_request")

    run_admin(db_url, scenario)


# --------------------------------------------------------------------------- lists


def test_list_pagination_meta_and_bad_values(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        for i in range(5):
            await api.ok("POST", "/api/admin/labels", {"title": f"l{i}"}, 201)
        body = await api.ok("GET", "/api/admin/labels?page=2&perPage=2")
        assert [x["title"] for x in body["data"]] == ["l2", "l3"]
        assert body["meta"] == {"page": 2, "perPage": 2, "total": 5}
        body = await api.ok("GET", "/api/admin/labels?page=9")
        assert body == {"data": [], "meta": {"page": 9, "perPage": 25, "total": 5}}
        # First value wins (URLSearchParams.get); unknown parameters are ignored.
        body = await api.ok("GET", "/api/admin/labels?perPage=1&perPage=x&zzz=1")
        assert body["meta"]["perPage"] == 1
        for q in ("page=0", "page=-1", "page=1.0", "page=", "perPage=0", "perPage=101",
                  "perPage=abc", "page=9007199254740992"):  # fmt: skip
            err(await api.call("GET", f"/api/admin/labels?{q}"), 400, "bad_request")
        assert (await api.ok("GET", "/api/admin/labels?perPage=100"))["meta"]["perPage"] == 100

    run_admin(db_url, scenario)


# --------------------------------------------------------------------------- users, teams


def test_user_create_validates_and_lower_cases_email(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        u = await api.ok(
            "POST", "/api/admin/users", {"email": "Ann@Example.COM", "name": "Ann"}, 201
        )
        assert u["email"] == "ann@example.com" and u["role"] == "agent" and u["teamId"] is None
        assert re.match(JS_ISO, u["createdAt"]) and u["createdAt"] == u["updatedAt"]
        assert list(u) == ["id", "email", "name", "role", "teamId", "createdAt", "updatedAt"]
        bad = [
            {"name": "x"},
            {"email": "no-at", "name": "x"},
            {"email": "a@b@c", "name": "x"},
            {"email": "@b", "name": "x"},
            {"email": "a@", "name": "x"},
            {"email": 5, "name": "x"},
            {"email": "a@" + "b" * 254, "name": "x"},
            {"email": "b@x"},
            {"email": "b@x", "name": ""},
            {"email": "b@x", "name": "\U0001f600" * 128},
            {"email": "b@x", "name": "x", "role": "customer"},
            {"email": "b@x", "name": "x", "role": "Agent"},
            {"email": "b@x", "name": "x", "teamId": 0},
            {"email": "b@x", "name": "x", "teamId": "1"},
            {"email": "b@x", "name": "x", "teamId": True},
            {"email": "b@x", "name": "x", "teamId": 1.5},
            {"email": "b@x", "name": "x", "teamId": 1},  # no such team
        ]
        for body in bad:
            err(await api.call("POST", "/api/admin/users", body), 400, "bad_request")
        ok = await api.ok(
            "POST",
            "/api/admin/users",
            {"email": "b@x", "name": "\U0001f600" * 127 + "x", "role": "admin", "teamId": None},
            201,
        )
        assert ok["role"] == "admin"
        t = await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)
        u3 = await api.ok(
            "POST", "/api/admin/users", {"email": "c@x", "name": "c", "teamId": 1.0}, 201
        )
        assert u3["teamId"] == t["id"]

    run_admin(db_url, scenario)


def test_user_email_unique_ignoring_case_and_accents_is_409(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/users", {"email": "rene@x.io", "name": "R"}, 201)
        for email in ("RENE@x.io", "René@X.IO", "rene@x.io "):
            r = await api.call("POST", "/api/admin/users", {"email": email, "name": "R"})
            err(r, 409, "conflict")
        u2 = await api.ok("POST", "/api/admin/users", {"email": "other@x.io", "name": "O"}, 201)
        r = await api.call("PATCH", f"/api/admin/users/{u2['id']}", {"email": "Rene@x.io"})
        err(r, 409, "conflict")
        # Its own value is no conflict.
        await api.ok("PATCH", f"/api/admin/users/{u2['id']}", {"email": "OTHER@x.io"})

    run_admin(db_url, scenario)


def test_user_filters_role_and_team(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        t = await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)
        await api.ok("POST", "/api/admin/users", {"email": "a@x", "name": "a"}, 201)
        await api.ok("POST", "/api/admin/users", {"email": "b@x", "name": "b", "role": "admin",
                                                  "teamId": t["id"]}, 201)  # fmt: skip
        await api.ok(
            "POST", "/api/admin/users", {"email": "c@x", "name": "c", "teamId": t["id"]}, 201
        )

        async def emails(q: str) -> list[str]:
            return [u["email"] for u in (await api.ok("GET", f"/api/admin/users?{q}"))["data"]]

        assert await emails("role=agent") == ["a@x", "c@x"]
        assert await emails(f"teamId={t['id']}") == ["b@x", "c@x"]
        assert await emails(f"role=agent&teamId={t['id']}") == ["c@x"]
        assert await emails("teamId=4294967296") == []
        for q in ("role=", "role=customer", "teamId=0", "teamId=", "teamId=x"):
            err(await api.call("GET", f"/api/admin/users?{q}"), 400, "bad_request")

    run_admin(db_url, scenario)


def test_team_name_unique_by_collation_is_409(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/teams", {"name": "Support"}, 201)
        for name in ("support", "SUPPORT", "Suppört", "support  "):
            err(await api.call("POST", "/api/admin/teams", {"name": name}), 409, "conflict")
        await api.ok("POST", "/api/admin/teams", {"name": "Support 2"}, 201)

    run_admin(db_url, scenario)


def test_patch_null_clears_nullable_and_leaves_required(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        t = await api.ok("POST", "/api/admin/teams", {"name": "T", "description": "d"}, 201)
        await tick()
        p = await api.ok(
            "PATCH", f"/api/admin/teams/{t['id']}", {"name": None, "description": None}
        )
        assert p["name"] == "T" and p["description"] is None
        assert p["updatedAt"] > t["updatedAt"] and p["createdAt"] == t["createdAt"]
        p = await api.ok("PATCH", f"/api/admin/teams/{t['id']}", {"description": ""})
        assert p["description"] == ""
        err(await api.call("PATCH", f"/api/admin/teams/{t['id']}", {"description": 1}), 400,
            "bad_request")  # fmt: skip
        u = await api.ok(
            "POST", "/api/admin/users", {"email": "a@x", "name": "a", "teamId": 1}, 201
        )
        p = await api.ok("PATCH", f"/api/admin/users/{u['id']}", {"email": None, "name": None,
                                                                  "role": None, "teamId": None})  # fmt: skip
        assert (p["email"], p["name"], p["role"], p["teamId"]) == ("a@x", "a", "agent", None)
        c = await api.ok("POST", "/api/admin/contacts", {"name": "n", "email": "e", "phone": "p",
                                                         "externalId": "x"}, 201)  # fmt: skip
        p = await api.ok(
            "PATCH", f"/api/admin/contacts/{c['id']}", {"phone": None, "externalId": None}
        )
        assert (p["email"], p["phone"], p["externalId"]) == ("e", None, None)
        lb = await api.ok("POST", "/api/admin/labels", {"title": "vip", "color": "#ABCDEF"}, 201)
        p = await api.ok("PATCH", f"/api/admin/labels/{lb['id']}", {"title": None, "color": None})
        assert (p["title"], p["color"]) == ("vip", "#ABCDEF")
        err(await api.call("PATCH", "/api/admin/labels/99", {}), 404, "not_found")
        err(await api.call("DELETE", "/api/admin/labels/99"), 404, "not_found")

    run_admin(db_url, scenario)


def test_team_delete_nulls_members_and_conversations_without_bumping(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        t = await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)
        u = await api.ok(
            "POST", "/api/admin/users", {"email": "a@x", "name": "a", "teamId": t["id"]}, 201
        )
        cid = await api.conversation()
        conv = await api.ok("PATCH", f"/api/admin/conversations/{cid}", {"teamId": t["id"],
                                                                        "assigneeId": u["id"]})  # fmt: skip
        await tick()
        r = await api.call("DELETE", f"/api/admin/teams/{t['id']}")
        assert r.status_code == 204 and r.content == b""
        u2 = await api.ok("GET", f"/api/admin/users/{u['id']}")
        assert u2["teamId"] is None and u2["updatedAt"] == u["updatedAt"]
        c2 = await api.ok("GET", f"/api/admin/conversations/{cid}")
        assert c2["teamId"] is None and c2["updatedAt"] == conv["updatedAt"]
        await tick()
        await api.ok("DELETE", f"/api/admin/users/{u['id']}", status=204)
        c3 = await api.ok("GET", f"/api/admin/conversations/{cid}")
        assert c3["assigneeId"] is None and c3["updatedAt"] == conv["updatedAt"]
        err(await api.call("GET", f"/api/admin/users/{u['id']}"), 404, "not_found")

    run_admin(db_url, scenario)


# --------------------------------------------------------------------------- labels


def test_label_title_and_color_rules(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        lb = await api.ok("POST", "/api/admin/labels", {"title": "Urgent_1-A"}, 201)
        assert (lb["title"], lb["color"]) == ("urgent_1-a", "#1f93ff")
        assert list(lb) == ["id", "title", "color", "createdAt", "updatedAt"]
        lb2 = await api.ok(
            "POST", "/api/admin/labels", {"title": "x" * 64, "color": "#aBc123"}, 201
        )
        assert lb2["color"] == "#aBc123"
        for body in ({}, {"title": ""}, {"title": "a b"}, {"title": "x" * 65}, {"title": "é"},
                     {"title": 1}, {"title": "ok\n"}, {"title": "ok", "color": "#abc"},
                     {"title": "ok", "color": "abcdef"}, {"title": "ok", "color": "#abcdeg"},
                     {"title": "ok", "color": 5}):  # fmt: skip
            err(await api.call("POST", "/api/admin/labels", body), 400, "bad_request")
        err(await api.call("POST", "/api/admin/labels", {"title": "URGENT_1-a"}), 409, "conflict")
        r = await api.call("PATCH", f"/api/admin/labels/{lb2['id']}", {"title": "Urgent_1-A"})
        err(r, 409, "conflict")

    run_admin(db_url, scenario)


def test_label_delete_detaches_without_bumping(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        lb = await api.ok("POST", "/api/admin/labels", {"title": "vip"}, 201)
        cid = await api.conversation()
        conv = await api.ok("POST", f"/api/admin/conversations/{cid}/labels", {"title": "vip"})
        assert conv["labels"] == ["vip"]
        await tick()
        await api.ok("DELETE", f"/api/admin/labels/{lb['id']}", status=204)
        after = await api.ok("GET", f"/api/admin/conversations/{cid}")
        assert after["labels"] == [] and after["updatedAt"] == conv["updatedAt"]

    run_admin(db_url, scenario)


# --------------------------------------------------------------------------- contacts


def test_contact_search_is_case_and_accent_insensitive_with_literal_wildcards(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        names = ["José Müller", "JOSE MULLER", "100% Sure", "a_b", "a\\b", "Plain"]
        for n in names:
            await api.ok("POST", "/api/admin/contacts", {"name": n}, 201)
        await api.ok("POST", "/api/admin/contacts", {"name": "Mail", "email": "ÉLODIE@x.fr"}, 201)

        async def found(q: str) -> list[str]:
            r = await api.call("GET", "/api/admin/contacts", params={"q": q})
            assert r.status_code == 200, r.text
            return [c["name"] for c in r.json()["data"]]

        assert await found("jose muller") == ["José Müller", "JOSE MULLER"]
        assert await found("MÜLL") == ["José Müller", "JOSE MULLER"]
        assert await found("%") == ["100% Sure"]
        assert await found("_") == ["a_b"]
        assert await found("\\") == ["a\\b"]
        assert await found("a%b") == []
        assert await found("elodie") == ["Mail"]
        assert len(await found("")) == 7
        body = await api.ok("GET", "/api/admin/contacts?q=jos&perPage=1")
        assert body["meta"] == {"page": 1, "perPage": 1, "total": 2}

    run_admin(db_url, scenario)


def test_contact_rules_sizes_and_external_id_conflict(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        c = await api.ok("POST", "/api/admin/contacts", {"name": "N", "email": "not an email",
                                                         "externalId": "Ext-1"}, 201)  # fmt: skip
        assert list(c) == ["id", "name", "email", "phone", "externalId", "createdAt", "updatedAt"]
        assert (c["email"], c["phone"]) == ("not an email", None)
        for body in ({"name": ""}, {}, {"name": "n", "phone": "1" * 65}, {"name": "n", "email": 1},
                     {"name": "n", "externalId": "x" * 65}, {"name": "n", "email": "e" * 256}):  # fmt: skip
            err(await api.call("POST", "/api/admin/contacts", body), 400, "bad_request")
        err(await api.call("POST", "/api/admin/contacts", {"name": "M", "externalId": "ext-1"}), 409,
            "conflict")  # fmt: skip
        m = await api.ok("POST", "/api/admin/contacts", {"name": "M", "externalId": None}, 201)
        await api.ok("POST", "/api/admin/contacts", {"name": "M2"}, 201)
        cid = await api.conversation(contact_id=c["id"])
        err(await api.call("DELETE", f"/api/admin/contacts/{c['id']}"), 409, "conflict")
        assert cid
        await api.ok("DELETE", f"/api/admin/contacts/{m['id']}", status=204)

    run_admin(db_url, scenario)


# --------------------------------------------------------------------------- conversations


def test_conversations_list_newest_first_with_filters(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        from datetime import datetime

        t0 = datetime(2024, 1, 1, 10, 0, 0, 123000)
        t1 = datetime(2024, 1, 1, 11, 0, 0)
        a = await api.conversation(updated_at=t0)
        b = await api.conversation(updated_at=t1)
        c = await api.conversation(updated_at=t1, status="resolved")
        team = await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)
        user = await api.ok("POST", "/api/admin/users", {"email": "a@x", "name": "a"}, 201)
        lb = await api.ok("POST", "/api/admin/labels", {"title": "vip"}, 201)
        await api.link(a, lb["id"])
        await api.link(b, lb["id"])
        from sqlalchemy import update

        from modules.admin.db import conversations

        async with api.engine.begin() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == a)
                               .values(team_id=team["id"], assignee_id=user["id"]))  # fmt: skip

        async def ids(q: str = "") -> list[int]:
            return [x["id"] for x in (await api.ok("GET", f"/api/admin/conversations?{q}"))["data"]]

        assert await ids() == [c, b, a]
        first = (await api.ok("GET", "/api/admin/conversations?perPage=1&page=3"))["data"][0]
        assert first["updatedAt"] == "2024-01-01T10:00:00.123Z" and first["labels"] == ["vip"]
        assert list(first) == ["id", "sessionId", "contactId", "status", "assigneeId", "teamId",
                               "labels", "createdAt", "updatedAt"]  # fmt: skip
        assert await ids("status=resolved") == [c]
        assert await ids("status=open") == [b, a]
        assert await ids(f"teamId={team['id']}") == [a]
        assert await ids(f"assigneeId={user['id']}") == [a]
        assert await ids("label=VIP") == [b, a]
        assert await ids("label=nope") == []
        assert await ids("label=") == [c, b, a]
        for q in ("status=", "status=closed", "assigneeId=0", "teamId=a", "page=0"):
            err(await api.call("GET", f"/api/admin/conversations?{q}"), 400, "bad_request")

    run_admin(db_url, scenario)


def test_conversation_patch_rules_and_updated_at(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        cid = await api.conversation()
        before = await api.ok("GET", f"/api/admin/conversations/{cid}")
        user = await api.ok("POST", "/api/admin/users", {"email": "a@x", "name": "a"}, 201)
        await tick()
        p = await api.ok("PATCH", f"/api/admin/conversations/{cid}",
                         {"status": "pending", "assigneeId": user["id"]})  # fmt: skip
        assert (p["status"], p["assigneeId"], p["teamId"]) == ("pending", user["id"], None)
        assert p["updatedAt"] > before["updatedAt"]
        await tick()
        p2 = await api.ok("PATCH", f"/api/admin/conversations/{cid}", {"status": None})
        assert p2["status"] == "pending" and p2["updatedAt"] > p["updatedAt"]
        p3 = await api.ok("PATCH", f"/api/admin/conversations/{cid}", {"assigneeId": None})
        assert p3["assigneeId"] is None
        for body in ({"status": "closed"}, {"status": 1}, {"assigneeId": 0}, {"teamId": "1"},
                     {"assigneeId": 999}, {"teamId": 999}, {"teamId": 1e30}):  # fmt: skip
            err(
                await api.call("PATCH", f"/api/admin/conversations/{cid}", body), 400, "bad_request"
            )
        err(await api.call("PATCH", "/api/admin/conversations/999", {"teamId": 999}), 400,
            "bad_request")  # fmt: skip
        err(await api.call("PATCH", "/api/admin/conversations/999", {}), 404, "not_found")
        err(await api.call("GET", "/api/admin/conversations/999"), 404, "not_found")

    run_admin(db_url, scenario)


def test_conversation_labels_add_remove_rules(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        for title in ("zeta", "alpha", "a-1", "a_1", "b"):
            await api.ok("POST", "/api/admin/labels", {"title": title}, 201)
        cid = await api.conversation()
        start = await api.ok("GET", f"/api/admin/conversations/{cid}")
        last = start["updatedAt"]
        for title in ("ZETA", "alpha", "a_1", "a-1", "b"):
            await tick()
            conv = await api.ok("POST", f"/api/admin/conversations/{cid}/labels", {"title": title})
            assert conv["updatedAt"] > last
            last = conv["updatedAt"]
        assert conv["labels"] == ["a-1", "a_1", "alpha", "b", "zeta"]
        await tick()
        again = await api.ok("POST", f"/api/admin/conversations/{cid}/labels", {"title": "Alpha"})
        assert again == conv
        path = f"/api/admin/conversations/{cid}/labels"
        err(await api.call("POST", path, {"title": "unknown"}), 404, "not_found")
        err(await api.call("POST", path, {"title": "bad title"}), 400, "bad_request")
        err(await api.call("POST", path, {}), 400, "bad_request")
        err(await api.call("POST", "/api/admin/conversations/999/labels", {"title": "b"}), 404,
            "not_found")  # fmt: skip
        removed = await api.ok("DELETE", f"{path}/ZETA")
        assert removed["labels"] == ["a-1", "a_1", "alpha", "b"] and removed["updatedAt"] > last
        await tick()
        same = await api.ok("DELETE", f"{path}/zeta")
        assert same == removed
        err(await api.call("DELETE", f"{path}/nope"), 404, "not_found")
        err(await api.call("DELETE", f"{path}/zeta", role="agent"), 403, "forbidden")

    run_admin(db_url, scenario)


def test_conversation_messages_limit_and_before(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        sid = "0b4c3c50-6f6e-4a43-9a83-3d0e2c1f0b11"
        cid = await api.conversation(session_id=sid)
        other = await api.conversation()
        uids = [await api.message(cid, f"m{i}", "ai" if i % 2 else "customer") for i in range(5)]
        foreign = await api.message(other, "x")
        before = await api.ok("GET", f"/api/admin/conversations/{cid}")
        body = await api.ok("GET", f"/api/admin/conversations/{cid}/messages")
        data = body["data"]
        assert [m["text"] for m in data] == ["m0", "m1", "m2", "m3", "m4"]
        assert data[0] == {"messageId": uids[0], "sessionId": sid, "from": "customer",
                           "senderId": "u-x", "text": "m0", "createdAt": data[0]["createdAt"]}  # fmt: skip
        assert re.match(JS_ISO, data[0]["createdAt"]) and data[1]["senderId"] is None
        page = await api.ok(
            "GET", f"/api/admin/conversations/{cid}/messages?limit=2&before={uids[4]}"
        )
        assert [m["text"] for m in page["data"]] == ["m2", "m3"]
        page = await api.ok("GET", f"/api/admin/conversations/{cid}/messages?limit=200")
        assert len(page["data"]) == 5
        base = f"/api/admin/conversations/{cid}/messages"
        for q in ("limit=0", "limit=201", "limit=", f"before={foreign}", "before=", "before=zz"):
            err(await api.call("GET", f"{base}?{q}"), 400, "bad_request")
        err(await api.call("GET", "/api/admin/conversations/999/messages"), 404, "not_found")
        err(await api.call("GET", f"/api/admin/conversations/999/messages?before={uids[0]}"), 400,
            "bad_request")  # fmt: skip
        assert await api.ok("GET", f"/api/admin/conversations/{other}/messages?limit=1") != body
        # Reading messages changes nothing.
        assert await api.ok("GET", f"/api/admin/conversations/{cid}") == before

    run_admin(db_url, scenario)


def test_stats_count_everything(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        assert await api.ok("GET", "/api/admin/stats") == {
            "conversations": {"open": 0, "pending": 0, "resolved": 0},
            "users": 0, "teams": 0, "contacts": 0, "labels": 0,
        }  # fmt: skip
        await api.conversation()
        await api.conversation(status="pending")
        await api.conversation(status="pending")
        await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)
        await api.ok("POST", "/api/admin/labels", {"title": "t"}, 201)
        await api.ok("POST", "/api/admin/users", {"email": "a@x", "name": "a"}, 201)
        assert await api.ok("GET", "/api/admin/stats") == {
            "conversations": {"open": 1, "pending": 2, "resolved": 0},
            "users": 1, "teams": 1, "contacts": 3, "labels": 1,
        }  # fmt: skip

    run_admin(db_url, scenario)


def test_concurrent_writes_all_succeed_and_serialise(db_url: str) -> None:
    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/labels", {"title": "vip"}, 201)
        cid = await api.conversation()
        teams = await asyncio.gather(
            *(api.call("POST", "/api/admin/teams", {"name": f"t{i}"}) for i in range(20))
        )
        assert sorted(r.status_code for r in teams) == [201] * 20
        assert len({r.json()["id"] for r in teams}) == 20
        dup = await asyncio.gather(
            *(api.call("POST", "/api/admin/teams", {"name": "same"}) for _ in range(5))
        )
        assert sorted(r.status_code for r in dup) == [201] + [409] * 4
        path = f"/api/admin/conversations/{cid}/labels"
        adds = await asyncio.gather(*(api.call("POST", path, {"title": "vip"}) for _ in range(5)))
        assert {r.status_code for r in adds} == {200}
        assert (await api.ok("GET", f"/api/admin/conversations/{cid}"))["labels"] == ["vip"]

    run_admin(db_url, scenario)


def test_in_memory_sqlite_serves_concurrent_requests() -> None:
    async def scenario(api: Api) -> None:
        rs = await asyncio.gather(
            *(api.call("POST", "/api/admin/teams", {"name": f"t{i}"}) for i in range(10))
        )
        assert [r.status_code for r in rs] == [201] * 10
        assert (await api.ok("GET", "/api/admin/teams"))["meta"]["total"] == 10

    run_admin("sqlite+aiosqlite://", scenario, seed=False)


# --------------------------------------------------------------------------- config


def test_no_database_url_uses_sqlite_file_in_working_directory(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))

    async def scenario(api: Api) -> None:
        await api.ok("POST", "/api/admin/teams", {"name": "T"}, 201)

    run_admin("", scenario)
    assert os.path.exists(os.path.join(str(tmp_path), "chat-gateway.db"))


def test_database_url_forms_are_normalised() -> None:
    assert normalise_url("mysql://u:p%40ss@h:3306/chat").startswith("mysql+asyncmy://u:p%40ss@h")
    assert "charset=utf8mb4" in normalise_url("mysql+aiomysql://u@h/chat")
    assert normalise_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValueError, match="driver"):
        normalise_url("mysql+pymysql://u@h/chat")
    with pytest.raises(ValueError, match="scheme"):
        normalise_url("postgresql://u@h/chat")
