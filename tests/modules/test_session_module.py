"""The session module in process, on the in-memory store and on real Redis."""

import asyncio
import re
import time
import uuid

import pytest
from module_helpers import JS_ISO, JSON_CT, assert_error, auth, module_env, serve, token

from modules.common.jsfmt import js_dumps, js_loads, parse_time
from modules.common.store import open_store

UUID4 = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def run(backend_url, fn, **env):
    async def main():
        async with (
            serve("session", module_env(backend_url, **env)) as client,
            open_store(backend_url) as store,
        ):
            await fn(client, store)

    asyncio.run(main())


async def create(client, sub, role="customer", **body):
    r = await client.post("/api/sessions", json=body, headers=auth(token(sub, role)))
    assert r.status_code == 201, r.text
    return r.json()


# --------------------------------------------------------------------------- basics


def test_health_answers_without_auth(backend_url):
    async def body(client, store):
        r = await client.get("/health")
        assert r.status_code == 200
        assert r.headers["content-type"] == JSON_CT
        assert r.content == b'{"status":"ok","service":"chat-session"}'
        head = await client.head("/health")
        assert head.status_code == 200 and head.content == b""

    run(backend_url, body)


def test_create_defaults_to_own_user_and_stores_legacy_shape(backend_url):
    async def body(client, store):
        me = uid()
        r = await client.post("/api/sessions", headers=auth(token(me)))
        assert r.status_code == 201 and r.headers["content-type"] == JSON_CT
        s = r.json()
        assert list(s) == [
            "sessionId", "userId", "agent", "context", "metadata", "createdAt", "updatedAt",
        ]  # fmt: skip
        assert re.match(UUID4, s["sessionId"]) and s["userId"] == me and s["agent"] == "ai"
        assert s["context"] == {} and s["metadata"] == {}
        assert re.match(JS_ISO, s["createdAt"]) and s["createdAt"] == s["updatedAt"]
        raw = await store.get(f"session:{s['sessionId']}")
        assert raw == js_dumps(s).decode()  # byte for byte what legacy writes
        assert 86_000_000 < await store.pttl(f"session:{s['sessionId']}") <= 86_400_000
        assert await store.zscore(f"user_sessions:{me}", s["sessionId"]) == parse_time(
            s["createdAt"]
        )
        assert 86_000_000 < await store.pttl(f"user_sessions:{me}") <= 86_400_000

    run(backend_url, body)


def test_create_with_metadata_keeps_it_and_body_is_compact_utf8(backend_url):
    async def body(client, store):
        me = uid()
        r = await client.post(
            "/api/sessions",
            content='{"metadata": {"b": 1.0, "1": "é😀", "n": null}}'.encode(),
            headers={**auth(token(me)), "Content-Type": "text/plain"},
        )
        assert r.status_code == 201
        assert '"metadata":{"1":"é😀","b":1,"n":null}'.encode() in r.content

    run(backend_url, body)


def test_customer_creating_for_someone_else_is_403_agent_may(backend_url):
    async def body(client, store):
        r = await client.post("/api/sessions", json={"userId": uid()}, headers=auth(token(uid())))
        assert_error(r, 403, "forbidden")
        other = uid()
        s = await create(client, uid(), "agent", userId=other)
        assert s["userId"] == other

    run(backend_url, body)


@pytest.mark.parametrize(
    "payload",
    [b'{"userId": ""}', b'{"userId": 5}', b'{"metadata": []}', b'{"metadata": "x"}', b"[]",
     b"{", b'"str"', b"null", b"NaN"],
)  # fmt: skip
def test_create_with_bad_body_is_400(backend_url, payload):
    async def body(client, store):
        r = await client.post("/api/sessions", content=payload, headers=auth(token(uid())))
        assert_error(r, 400, "bad_request")

    run(backend_url, body)


def test_empty_or_whitespace_body_counts_as_empty_object(backend_url):
    async def body(client, store):
        for payload in (b"", b"  \n\t", b"null-free \xef\xbb\xbf"[:0], "\ufeff ".encode()):
            r = await client.post("/api/sessions", content=payload, headers=auth(token(uid())))
            assert r.status_code == 201, (payload, r.text)

    run(backend_url, body)


def test_body_of_exactly_one_mib_is_accepted_one_more_byte_is_413(backend_url):
    async def body(client, store):
        head, tail = b'{"metadata":{"pad":"', b'"}}'
        exact = head + b"a" * (1_048_576 - len(head) - len(tail)) + tail
        assert len(exact) == 1_048_576
        r = await client.post("/api/sessions", content=exact, headers=auth(token(uid())))
        assert r.status_code == 201
        big = head + b"a" * (1_048_577 - len(head) - len(tail)) + tail
        r = await client.post("/api/sessions", content=big, headers=auth(token(uid())))
        assert_error(r, 413, "payload_too_large")

    run(backend_url, body)


def test_authentication_is_checked_before_body_size_and_validity(backend_url):
    async def body(client, store):
        r = await client.post("/api/sessions", content=b"x" * 2_000_000)
        assert_error(r, 401, "unauthorized")
        r = await client.post("/api/sessions", content=b"{", headers={"Authorization": "Bearer x"})
        assert_error(r, 401, "unauthorized")

    run(backend_url, body)


def test_unknown_paths_and_unrouted_methods_are_404(backend_url):
    async def body(client, store):
        h = auth(token(uid()))
        assert_error(await client.put("/api/sessions", headers=h), 404, "not_found")
        assert_error(await client.get("/api/nothing", headers=h), 404, "not_found")
        assert_error(await client.post("/api/sessions/abc", headers=h), 404, "not_found")
        assert_error(await client.get("/api/sessions//", headers=h), 404, "not_found")
        # 404 for an unknown path comes before authentication
        assert_error(await client.get("/api/nothing"), 404, "not_found")

    run(backend_url, body)


def test_one_trailing_slash_is_tolerated(backend_url):
    async def body(client, store):
        me = uid()
        s = await create(client, me)
        r = await client.get(f"/api/sessions/{s['sessionId']}/", headers=auth(token(me)))
        assert r.status_code == 200 and r.json() == s
        r = await client.post("/api/sessions/", headers=auth(token(me)))
        assert r.status_code == 201

    run(backend_url, body)


def test_missing_jwt_secret_makes_every_request_401(backend_url):
    async def main():
        async with serve("session", {"REDIS_URL": backend_url or ""}) as client:
            assert_error(
                await client.post("/api/sessions", headers=auth(token())), 401, "unauthorized"
            )
            assert (await client.get("/health")).status_code == 200

    asyncio.run(main())


# --------------------------------------------------------------------------- read, ownership


def test_get_missing_is_404_and_foreign_is_403_for_customers_only(backend_url):
    async def body(client, store):
        owner, stranger = uid(), uid()
        s = await create(client, owner)
        url = f"/api/sessions/{s['sessionId']}"
        assert (await client.get(url, headers=auth(token(owner)))).json() == s
        assert_error(await client.get(url, headers=auth(token(stranger))), 403, "forbidden")
        for role in ("agent", "admin"):
            assert (await client.get(url, headers=auth(token(stranger, role)))).json() == s
        missing = f"/api/sessions/{uuid.uuid4()}"
        assert_error(await client.get(missing, headers=auth(token(stranger))), 404, "not_found")
        bad_escape = "/api/sessions/%E0%A4%A"
        assert_error(await client.get(bad_escape, headers=auth(token(owner))), 404, "not_found")

    run(backend_url, body)


def test_python_shape_record_reads_as_the_seven_field_session(backend_url):
    async def body(client, store):
        me, sid = uid(), str(uuid.uuid4())
        record = {
            "session_id": "ignored-the-key-wins",
            "user_id": me,
            "agent_type": "human",
            "created_at": "2024-01-01T10:00:00.123456+00:00",
            "updated_at": 1704110400.5,
        }
        await store.set(f"session:{sid}", js_dumps(record).decode(), ex=100)
        r = await client.get(f"/api/sessions/{sid}", headers=auth(token(me)))
        assert r.content == js_dumps(
            {
                "sessionId": sid,
                "userId": me,
                "agent": "human",
                "context": {},
                "metadata": {},
                "createdAt": "2024-01-01T10:00:00.123Z",
                "updatedAt": "2024-01-01T12:00:00.500Z",
            }
        )

    run(backend_url, body)


def test_old_legacy_record_without_updated_at_reads_created_at(backend_url):
    async def body(client, store):
        me, sid = uid(), str(uuid.uuid4())
        rec = {"sessionId": sid, "userId": me, "agent": "ai", "context": {"a": 1},
               "metadata": {}, "createdAt": "2024-05-01T00:00:00.000Z"}  # fmt: skip
        await store.set(f"session:{sid}", js_dumps(rec).decode())
        s = (await client.get(f"/api/sessions/{sid}", headers=auth(token(me)))).json()
        assert s["updatedAt"] == s["createdAt"] == "2024-05-01T00:00:00.000Z"

    run(backend_url, body)


def test_unreadable_record_is_treated_as_missing(backend_url):
    async def body(client, store):
        sid = str(uuid.uuid4())
        await store.set(f"session:{sid}", "{not json", ex=100)
        r = await client.get(f"/api/sessions/{sid}", headers=auth(token("x", "admin")))
        assert_error(r, 404, "not_found")

    run(backend_url, body)


# --------------------------------------------------------------------------- patch


def test_patch_merges_one_level_null_removes_and_bumps_updated_at(backend_url):
    async def body(client, store):
        me = uid()
        s = await create(client, me, metadata={"keep": 1, "drop": 2, "deep": {"a": 1}})
        await asyncio.sleep(0.01)
        url, h = f"/api/sessions/{s['sessionId']}", auth(token(me))
        r = await client.patch(
            url,
            json={"agent": "human", "context": {"x": [1]}, "metadata": {"drop": None,
                  "deep": {"b": 2}, "new": "v", "absent": None}},
        headers=h)  # fmt: skip
        assert r.status_code == 200
        p = r.json()
        assert p["agent"] == "human"
        assert p["context"] == {"x": [1]}
        assert p["metadata"] == {"keep": 1, "deep": {"b": 2}, "new": "v"}
        assert list(p["metadata"]) == ["keep", "deep", "new"]
        assert p["createdAt"] == s["createdAt"] and p["updatedAt"] > s["updatedAt"]
        assert (await client.get(url, headers=h)).json() == p

    run(backend_url, body)


def test_empty_patch_only_bumps_updated_at_and_resets_ttls(backend_url):
    async def body(client, store):
        me = uid()
        s = await create(client, me)
        await store.expire(f"session:{s['sessionId']}", 100)
        await store.expire(f"user_sessions:{me}", 100)
        await asyncio.sleep(0.01)
        r = await client.patch(f"/api/sessions/{s['sessionId']}", headers=auth(token(me)))
        p = r.json()
        assert {k: v for k, v in p.items() if k != "updatedAt"} == {
            k: v for k, v in s.items() if k != "updatedAt"
        }
        assert p["updatedAt"] > s["updatedAt"]
        assert await store.pttl(f"session:{s['sessionId']}") > 86_000_000
        assert await store.pttl(f"user_sessions:{me}") > 86_000_000

    run(backend_url, body)


@pytest.mark.parametrize(
    "payload", [{"agent": "bot"}, {"agent": 1}, {"context": []}, {"metadata": "m"}]
)
def test_patch_with_bad_field_is_400_even_for_a_missing_session(backend_url, payload):
    async def body(client, store):
        r = await client.patch(
            f"/api/sessions/{uuid.uuid4()}", json=payload, headers=auth(token(uid()))
        )
        assert_error(r, 400, "bad_request")

    run(backend_url, body)


def test_patch_of_foreign_session_is_403_and_changes_nothing(backend_url):
    async def body(client, store):
        owner = uid()
        s = await create(client, owner)
        before = await store.get(f"session:{s['sessionId']}")
        r = await client.patch(
            f"/api/sessions/{s['sessionId']}", json={"agent": "human"}, headers=auth(token(uid()))
        )
        assert_error(r, 403, "forbidden")
        assert await store.get(f"session:{s['sessionId']}") == before

    run(backend_url, body)


@pytest.mark.parametrize("shape", ["legacy", "python", "both"])
def test_patch_of_python_record_writes_the_configured_shape(backend_url, shape):
    async def body(client, store):
        me, sid = uid(), str(uuid.uuid4())
        rec = {"user_id": me, "agent_type": "ai", "context": {"c": 1}, "metadata": {},
               "created_at": 1704103200, "updated_at": 1704103200}  # fmt: skip
        await store.set(f"session:{sid}", js_dumps(rec).decode())
        r = await client.patch(
            f"/api/sessions/{sid}", json={"context": {"d": 2}}, headers=auth(token(me))
        )
        assert r.status_code == 200
        stored = js_loads(await store.get(f"session:{sid}"))
        legacy_keys = {"sessionId", "userId", "agent", "createdAt", "updatedAt"}
        python_keys = {"session_id", "user_id", "agent_type", "created_at", "updated_at"}
        assert (legacy_keys <= set(stored)) == (shape in ("legacy", "both"))
        assert (python_keys <= set(stored)) == (shape in ("python", "both"))
        assert stored["context"] == {"c": 1, "d": 2}
        if shape == "python":
            assert stored["created_at"] == "2024-01-01T10:00:00+00:00"
        again = await client.get(f"/api/sessions/{sid}", headers=auth(token(me)))
        assert again.json() == r.json()
        assert r.json()["createdAt"] == "2024-01-01T10:00:00.000Z"

    run(backend_url, body, SESSION_WRITE_SHAPE=shape)


# --------------------------------------------------------------------------- delete, list


def test_delete_is_204_empty_removes_key_and_index_entry_then_404(backend_url):
    async def body(client, store):
        me = uid()
        s = await create(client, me)
        await store.rpush(f"history:{s['sessionId']}", "kept")
        url, h = f"/api/sessions/{s['sessionId']}", auth(token(me))
        r = await client.delete(url, headers=h)
        assert r.status_code == 204 and r.content == b""
        assert await store.get(f"session:{s['sessionId']}") is None
        assert await store.zscore(f"user_sessions:{me}", s["sessionId"]) is None
        assert await store.lrange(f"history:{s['sessionId']}", 0, -1) == ["kept"]
        assert_error(await client.delete(url, headers=h), 404, "not_found")

    run(backend_url, body)


def test_list_is_newest_first_ties_by_session_id_desc_and_skips_expired(backend_url):
    async def body(client, store):
        me = uid()
        ids = ["aaaa", "cccc", "bbbb", "dddd", "gone"]
        created = {"aaaa": 1000, "cccc": 1000, "bbbb": 1000, "dddd": 2000, "gone": 3000}
        for sid in ids:
            if sid != "gone":
                rec = {"sessionId": sid, "userId": me, "agent": "ai", "context": {},
                       "metadata": {}, "createdAt": created[sid], "updatedAt": created[sid]}  # fmt: skip
                await store.set(f"session:{sid}", js_dumps(rec).decode(), ex=100)
            await store.zadd(f"user_sessions:{me}", {sid: created[sid]})
        r = await client.get("/api/sessions", params={"userId": me}, headers=auth(token(me)))
        assert r.status_code == 200
        assert [s["sessionId"] for s in r.json()["data"]] == ["dddd", "cccc", "bbbb", "aaaa"]
        assert await store.zscore(f"user_sessions:{me}", "gone") == 3000  # skipped, not removed

    run(backend_url, body)


def test_list_rules_userid_required_and_customer_only_own(backend_url):
    async def body(client, store):
        me = uid()
        h = auth(token(me))
        assert_error(await client.get("/api/sessions", headers=h), 400, "bad_request")
        assert_error(await client.get("/api/sessions?userId=", headers=h), 400, "bad_request")
        r = await client.get("/api/sessions", params={"userId": uid()}, headers=h)
        assert_error(r, 403, "forbidden")
        r = await client.get("/api/sessions", params={"userId": me}, headers=h)
        assert r.json() == {"data": []}
        r = await client.get(
            "/api/sessions", params={"userId": me}, headers=auth(token(uid(), "agent"))
        )
        assert r.status_code == 200

    run(backend_url, body)


def test_list_shows_created_sessions_with_exact_bytes(backend_url):
    async def body(client, store):
        me = uid()
        a = await create(client, me, metadata={"n": 1})
        time.sleep(0.002)
        b = await create(client, me)
        r = await client.get(f"/api/sessions?userId={me}&junk=1", headers=auth(token(me)))
        assert r.content == js_dumps({"data": [b, a]})

    run(backend_url, body)
