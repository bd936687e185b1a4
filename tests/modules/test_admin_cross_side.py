"""chat-admin module and legacy chat-admin side by side on the same MariaDB database.

The legacy stack (``legacy_stack``) runs the Node services on their own database; the
module is pointed at that database with the stack's JWT secret. Whatever one side writes,
the other reads back byte for byte, and both answer the same requests the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from test_admin_helpers import Api, run_admin, token, top_conftest


class Sides:
    """The module (``api``) and legacy chat-admin / chat-core / chat-session over HTTP."""

    def __init__(self, api: Api, http: httpx.AsyncClient, stack: Any) -> None:
        self.api = api
        self.http = http
        self.stack = stack

    def auth(self, role: str, sub: str = "u-admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {token(role, sub=sub, secret=self.stack.jwt_secret)}"}

    async def legacy(
        self, method: str, path: str, body: Any = None, *, role: str = "admin", **kw: Any
    ) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return await self.http.request(
            method, self.stack.admin + path, headers=self.auth(role), **kw
        )

    async def module(
        self, method: str, path: str, body: Any = None, *, role: str = "admin", **kw: Any
    ) -> httpx.Response:
        return await self.api.call(method, path, body, role=role, **kw)

    async def same(self, method: str, path: str, role: str = "admin") -> Any:
        """GET (or any read) on both sides: same status, content type and bytes."""
        a = await self.module(method, path, role=role)
        b = await self.legacy(method, path, role=role)
        assert (a.status_code, a.headers.get("content-type")) == (
            b.status_code,
            b.headers.get("content-type"),
        ), (path, a.text, b.text)
        assert a.content == b.content, (path, a.text, b.text)
        return a.json() if a.content else None

    async def same_error(self, method: str, path: str, body: Any = None, **kw: Any) -> str:
        a = await self.module(method, path, body, **kw)
        b = await self.legacy(method, path, body, **kw)
        assert a.status_code == b.status_code, (method, path, body, a.text, b.text)
        code_a, code_b = a.json()["error"]["code"], b.json()["error"]["code"]
        assert code_a == code_b, (method, path, body, a.text, b.text)
        return str(code_a)

    async def chat(self, text: str = "hello") -> tuple[str, str]:
        """A conversation started through legacy chat-session + chat-core: (sessionId, uid)."""
        uid = "u-" + uuid.uuid4().hex[:12]
        customer = self.auth("customer", sub=uid)
        r = await self.http.post(f"{self.stack.session}/api/sessions", json={}, headers=customer)
        assert r.status_code == 201, r.text
        sid = r.json()["sessionId"]
        # An agent's message is stored without asking the AI (reply null).
        r = await self.http.post(
            f"{self.stack.core}/api/messages",
            json={"sessionId": sid, "text": text},
            headers=self.auth("agent", sub="u-agent"),
        )
        assert r.status_code == 201, r.text
        return sid, uid

    async def conversation_of(self, sid: str) -> dict[str, Any]:
        for page in range(1, 100):
            body = await self.legacy("GET", f"/api/admin/conversations?perPage=100&page={page}")
            data = body.json()["data"]
            for conv in data:
                if conv["sessionId"] == sid:
                    return dict(conv)
            if not data:
                break
        raise AssertionError(f"no conversation for session {sid}")


@pytest.fixture
def sides(legacy_stack: Any, request: pytest.FixtureRequest) -> Callable[..., None]:
    """``sides(scenario)``: run ``scenario(Sides)`` with the module on the stack's database."""
    url = str(top_conftest(request.config).mysql_url(legacy_stack.mysql_db))

    def run(scenario: Callable[[Sides], Awaitable[None]]) -> None:
        async def with_http(api: Api) -> None:
            async with httpx.AsyncClient(trust_env=False, timeout=15) as http:
                await scenario(Sides(api, http, legacy_stack))

        run_admin(url, with_http, env={"JWT_SECRET_KEY": legacy_stack.jwt_secret})

    return run


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def test_legacy_conversation_managed_by_module_reads_same_on_legacy(sides: Any) -> None:
    async def scenario(s: Sides) -> None:
        sid, uid = await s.chat("hi from legacy")
        conv = await s.conversation_of(sid)
        cid = conv["id"]
        assert await s.same("GET", f"/api/admin/conversations/{cid}") == conv
        tag = _tag()
        label = (await s.module("POST", "/api/admin/labels", {"title": f"VIP-{tag}"})).json()
        agent = (await s.module("POST", "/api/admin/users",
                                {"email": f"{tag}@x.io", "name": "Agent"})).json()  # fmt: skip
        await asyncio.sleep(0.01)
        r = await s.module(
            "POST", f"/api/admin/conversations/{cid}/labels", {"title": f"vip-{tag}"}
        )
        assert r.status_code == 200 and r.json()["labels"] == [label["title"]]
        assert r.json()["updatedAt"] > conv["updatedAt"]
        r = await s.module("PATCH", f"/api/admin/conversations/{cid}",
                           {"assigneeId": agent["id"], "status": "resolved"})  # fmt: skip
        assert r.status_code == 200, r.text
        mine = r.json()
        assert await s.same("GET", f"/api/admin/conversations/{cid}") == mine
        assert await s.same("GET", f"/api/admin/conversations/{cid}", role="agent") == mine
        listed = await s.same("GET", f"/api/admin/conversations?label=VIP-{tag}")
        assert listed["data"] == [mine]
        await s.same("GET", f"/api/admin/conversations?assigneeId={agent['id']}&status=resolved")
        msgs = await s.same("GET", f"/api/admin/conversations/{cid}/messages")
        assert [(m["text"], m["from"], m["sessionId"]) for m in msgs["data"]] == [
            ("hi from legacy", "agent", sid)
        ]
        contact = await s.same("GET", f"/api/admin/contacts/{conv['contactId']}")
        assert contact["externalId"] == uid
        await s.same("GET", "/api/admin/stats")

    sides(scenario)


def test_module_changes_of_legacy_conversation_and_reverse_read_identically(sides: Any) -> None:
    async def scenario(s: Sides) -> None:
        sid, _ = await s.chat("first")
        cid = (await s.conversation_of(sid))["id"]
        tag = _tag()
        team = (await s.legacy("POST", "/api/admin/teams", {"name": f"Team {tag}"})).json()
        for t in ("b", "a"):
            assert (await s.legacy("POST", "/api/admin/labels", {"title": f"{t}-{tag}"})
                    ).status_code == 201  # fmt: skip
        r = await s.legacy("PATCH", f"/api/admin/conversations/{cid}",
                           {"teamId": team["id"], "status": "pending"})  # fmt: skip
        assert r.status_code == 200
        for t in ("b", "a"):
            r = await s.legacy(
                "POST", f"/api/admin/conversations/{cid}/labels", {"title": f"{t}-{tag}"}
            )
            assert r.status_code == 200
        theirs = r.json()
        assert await s.same("GET", f"/api/admin/conversations/{cid}") == theirs
        assert theirs["labels"] == [f"a-{tag}", f"b-{tag}"]
        # Module: remove one (bumps), remove it again (no-op), legacy reads the same.
        r1 = (await s.module("DELETE", f"/api/admin/conversations/{cid}/labels/A-{tag}")).json()
        await asyncio.sleep(0.01)
        r2 = (await s.module("DELETE", f"/api/admin/conversations/{cid}/labels/a-{tag}")).json()
        assert r1 == r2 and r1["labels"] == [f"b-{tag}"]
        assert await s.same("GET", f"/api/admin/conversations/{cid}") == r1
        # A new message through legacy chat-core bumps updatedAt for both readers.
        await asyncio.sleep(0.01)
        r = await s.http.post(
            f"{s.stack.core}/api/messages",
            json={"sessionId": sid, "text": "second"},
            headers=s.auth("agent", sub="u-agent"),
        )
        assert r.status_code == 201
        after = await s.same("GET", f"/api/admin/conversations/{cid}")
        assert after["updatedAt"] > r1["updatedAt"]
        msgs = await s.same("GET", f"/api/admin/conversations/{cid}/messages?limit=1")
        first = msgs["data"][0]["messageId"]
        assert msgs["data"][0]["text"] == "second"
        await s.same("GET", f"/api/admin/conversations/{cid}/messages?before={first}")
        # Deleting the team on the module side nulls the conversation's team on both.
        assert (await s.module("DELETE", f"/api/admin/teams/{team['id']}")).status_code == 204
        gone = await s.same("GET", f"/api/admin/conversations/{cid}")
        assert gone["teamId"] is None and gone["updatedAt"] == after["updatedAt"]

    sides(scenario)


def test_resources_created_on_either_side_read_identically(sides: Any) -> None:
    async def scenario(s: Sides) -> None:
        tag = _tag()
        created: list[str] = []
        for side, make in (("legacy", s.legacy), ("module", s.module)):
            team = (await make("POST", "/api/admin/teams",
                               {"name": f"{side} Équipe {tag}", "description": "d"})).json()  # fmt: skip
            user = (await make("POST", "/api/admin/users",
                               {"email": f"{side}.{tag}@X.io", "name": "Zoë 😀", "role": "admin",
                                "teamId": team["id"]})).json()  # fmt: skip
            label = (await make("POST", "/api/admin/labels",
                                {"title": f"{side}-{tag}", "color": "#ABCdef"})).json()  # fmt: skip
            contact = (await make("POST", "/api/admin/contacts",
                                  {"name": f"Renée {side} {tag}", "email": "",
                                   "externalId": f"{side}-{tag}"})).json()  # fmt: skip
            for kind, obj in (("teams", team), ("users", user), ("labels", label),
                              ("contacts", contact)):  # fmt: skip
                assert await s.same("GET", f"/api/admin/{kind}/{obj['id']}") == obj
                created.append(f"/api/admin/{kind}/{obj['id']}")
            await s.same("GET", f"/api/admin/users?teamId={team['id']}&role=admin")
            patched = (await make("PATCH", f"/api/admin/contacts/{contact['id']}",
                                  {"email": None, "phone": "+1"})).json()  # fmt: skip
            assert await s.same("GET", f"/api/admin/contacts/{contact['id']}") == patched
        found = await s.same("GET", "/api/admin/contacts?q=RENEE%20&perPage=100&page=1")
        assert found["meta"]["total"] >= 2
        found = await s.same("GET", f"/api/admin/contacts?q=renee%20legacy%20{tag}")
        assert [c["externalId"] for c in found["data"]] == [f"legacy-{tag}"]
        await s.same("GET", f"/api/admin/contacts?q=%25{tag}")
        await s.same("GET", "/api/admin/labels?perPage=100")
        # The unique keys follow the collation on both sides, whoever wrote the first row.
        for path, body in (
            ("/api/admin/teams", {"name": f"LEGACY EQUIPE {tag}"}),
            ("/api/admin/teams", {"name": f"module équipe {tag}  "}),
            ("/api/admin/users", {"email": f"LEGACY.{tag}@x.io", "name": "n"}),
            ("/api/admin/labels", {"title": f"MODULE-{tag}"}),
            ("/api/admin/contacts", {"name": "n", "externalId": f"Legacy-{tag}"}),
        ):
            assert await s.same_error("POST", path, body) == "conflict"
        # A lone surrogate (valid JSON, not valid UTF-8) is stored as U+FFFD by both.
        raw = b'{"name": "lone \\ud800 ' + tag.encode() + b'", "phone": "\\udfff"}'
        for make in (s.legacy, s.module):
            r = await make("POST", "/api/admin/contacts", content=raw)
            assert r.status_code == 201, r.text
            assert (r.json()["name"], r.json()["phone"]) == (f"lone \ufffd {tag}", "\ufffd")
            assert await s.same("GET", f"/api/admin/contacts/{r.json()['id']}") == r.json()
        for path in created:
            assert (await s.legacy("DELETE", path)).status_code in (204, 409)

    sides(scenario)


def test_both_sides_answer_bad_requests_the_same(sides: Any) -> None:
    async def scenario(s: Sides) -> None:
        sid, _ = await s.chat()
        conv = await s.conversation_of(sid)
        cid = conv["id"]
        before = (await s.module("GET", f"/api/admin/conversations/{cid}")).json()
        cases: list[tuple[str, str, Any, str]] = [
            ("GET", "/api/admin/users?page=0", None, "admin"),
            ("GET", "/api/admin/users?perPage=101", None, "admin"),
            ("GET", "/api/admin/users?role=", None, "admin"),
            ("GET", "/api/admin/users?teamId=0", None, "admin"),
            ("GET", "/api/admin/conversations?status=x", None, "agent"),
            ("GET", "/api/admin/conversations?assigneeId=", None, "agent"),
            ("GET", "/api/admin/users/abc", None, "admin"),
            ("GET", "/api/admin/users/0", None, "admin"),
            ("GET", "/api/admin/stats", None, "customer"),
            ("POST", "/api/admin/labels", {"title": "x"}, "agent"),
            ("POST", "/api/admin/users", {"email": "a@b@c", "name": "x"}, "admin"),
            ("POST", "/api/admin/users", {"email": "q@x", "name": "x", "teamId": 1.5}, "admin"),
            ("POST", "/api/admin/labels", {"title": "a b"}, "admin"),
            ("POST", "/api/admin/labels", {"title": "ok", "color": "#12345"}, "admin"),
            ("POST", "/api/admin/contacts", {"name": "n", "phone": "1" * 65}, "admin"),
            ("PATCH", f"/api/admin/conversations/{cid}", {"status": "closed"}, "admin"),
            ("PATCH", f"/api/admin/conversations/{cid}", {"assigneeId": 2**40}, "admin"),
            ("PATCH", "/api/admin/conversations/999999999", {}, "admin"),
            (
                "POST",
                f"/api/admin/conversations/{cid}/labels",
                {"title": "no-such-label-x"},
                "admin",
            ),
            ("POST", f"/api/admin/conversations/{cid}/labels", {}, "admin"),
            ("DELETE", f"/api/admin/conversations/{cid}/labels/no-such-label-x", None, "admin"),
            ("DELETE", f"/api/admin/contacts/{conv['contactId']}", None, "admin"),
            ("GET", f"/api/admin/conversations/{cid}/messages?limit=201", None, "agent"),
            ("GET", f"/api/admin/conversations/{cid}/messages?before=nope", None, "agent"),
            ("GET", "/api/admin/conversations/999999999/messages", None, "agent"),
            ("PUT", "/api/admin/users", None, "admin"),
            ("DELETE", f"/api/admin/conversations/{cid}/labels/%zz", None, "admin"),
            ("GET", "/api/admin/users//", None, "admin"),
            ("GET", "/API/admin/users", None, "admin"),
        ]
        for method, path, body, role in cases:
            await s.same_error(method, path, body, role=role)
        # HEAD is served by GET: same status and headers, no body.
        for path in (f"/api/admin/conversations/{cid}", "/api/admin/stats", "/api/admin/nope"):
            a, b = await s.module("HEAD", path), await s.legacy("HEAD", path)
            assert a.status_code == b.status_code and a.content == b.content == b""
            for name in ("content-type", "content-length"):
                assert a.headers.get(name) == b.headers.get(name), (path, name)
        # None of these changed the conversation.
        assert await s.same("GET", f"/api/admin/conversations/{cid}") == before

    sides(scenario)
