"""Legacy Node services and Python modules on one Redis: a client cannot tell them apart.

Every test talks to the real legacy stack (``legacy_stack``) and to the modules in process,
both on the stack's Redis database, and compares what clients read byte for byte.
"""

import asyncio
import json
import uuid

import httpx
import pytest
from module_helpers import auth, encode_jwt, serve_many

from modules.common.jsfmt import js_dumps
from modules.common.store import open_store


def uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def mark() -> str:
    return "mk-" + uuid.uuid4().hex[:12]


@pytest.fixture
def stack_env(legacy_stack):
    return {
        "REDIS_URL": legacy_stack.redis_url,
        "JWT_SECRET_KEY": legacy_stack.jwt_secret,
        "DASHSCOPE_BASE_URL": legacy_stack.provider,
        "DASHSCOPE_API_KEY": legacy_stack.env["DASHSCOPE_API_KEY"],
        "DASHSCOPE_TIMEOUT_MS": legacy_stack.env["DASHSCOPE_TIMEOUT_MS"],
    }


class Sides:
    """The same service on both sides: ``legacy`` (HTTP to Node) and ``module`` (ASGI)."""

    def __init__(self, legacy_session, legacy_ai, mod_session, mod_ai, store, secret):
        self.legacy = {"session": legacy_session, "ai": legacy_ai}
        self.module = {"session": mod_session, "ai": mod_ai}
        self.store = store
        self.secret = secret

    def tok(self, sub, role="customer"):
        import time

        payload = {"sub": sub, "role": role, "exp": int(time.time()) + 3600}
        return auth(encode_jwt(payload, self.secret))


def run(legacy_stack, env, fn):
    async def main():
        async with (
            serve_many(["session", "ai"], env) as mods,
            open_store(env["REDIS_URL"]) as store,
            httpx.AsyncClient(base_url=legacy_stack.session, trust_env=False, timeout=15) as ls,
            httpx.AsyncClient(base_url=legacy_stack.ai, trust_env=False, timeout=15) as la,
        ):
            await fn(Sides(ls, la, mods["session"], mods["ai"], store, legacy_stack.jwt_secret))

    asyncio.run(main())


def same_response(a: httpx.Response, b: httpx.Response) -> None:
    """Same content type and bytes; same status, except a 201 create read back as 200."""
    statuses = {a.status_code, b.status_code}
    assert len(statuses) == 1 or statuses == {200, 201}, statuses
    assert a.headers.get("content-type") == b.headers.get("content-type")
    assert a.content == b.content


def without_updated(body: bytes) -> dict:
    data = json.loads(body)
    data.pop("updatedAt")
    return data


# --------------------------------------------------------------------------- sessions


def test_legacy_created_session_is_read_patched_listed_by_module_then_by_legacy(
    legacy_stack, stack_env
):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        r = await x.legacy["session"].post(
            "/api/sessions", json={"metadata": {"b": 1.0, "1": "é😀", "deep": {"k": [1, 2]}}},
            headers=h)  # fmt: skip
        assert r.status_code == 201
        sid = r.json()["sessionId"]
        url = f"/api/sessions/{sid}"
        same_response(await x.module["session"].get(url, headers=h), r)
        patched = await x.module["session"].patch(
            url, json={"agent": "human", "metadata": {"1": None, "z": True}}, headers=h
        )
        assert patched.status_code == 200
        same_response(await x.legacy["session"].get(url, headers=h), patched)
        listed_m = await x.module["session"].get(f"/api/sessions?userId={me}", headers=h)
        listed_l = await x.legacy["session"].get(f"/api/sessions?userId={me}", headers=h)
        same_response(listed_m, listed_l)
        assert listed_m.content == b'{"data":[' + patched.content + b"]}"

    run(legacy_stack, stack_env, body)


def test_module_created_session_is_read_and_patched_by_legacy_then_by_module(
    legacy_stack, stack_env
):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        created = await x.module["session"].post(
            "/api/sessions", json={"metadata": {"n": 12345678901234567890, "f": 0.5}}, headers=h
        )
        sid = created.json()["sessionId"]
        url = f"/api/sessions/{sid}"
        same_response(await x.legacy["session"].get(url, headers=h), created)
        ctx = {"context": {"topic": "billing", "x": None}}
        by_legacy = await x.legacy["session"].patch(url, json=ctx, headers=h)
        by_module = await x.module["session"].patch(url, json=ctx, headers=h)
        assert without_updated(by_legacy.content) == without_updated(by_module.content)
        same_response(await x.legacy["session"].get(url, headers=h), by_module)
        gone = await x.module["session"].delete(url, headers=h)
        assert gone.status_code == 204
        missing = await x.legacy["session"].get(url, headers=h)
        assert missing.status_code == 404
        assert await x.store.zscore(f"user_sessions:{me}", sid) is None

    run(legacy_stack, stack_env, body)


def test_records_stored_by_each_side_are_byte_identical(legacy_stack, stack_env):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        meta = {"metadata": {"b": 2, "a": [1.5, None], "10": "ten", "2": "two"}}
        a = (await x.legacy["session"].post("/api/sessions", json=meta, headers=h)).json()
        b = (await x.module["session"].post("/api/sessions", json=meta, headers=h)).json()
        raw_a = await x.store.get(f"session:{a['sessionId']}")
        raw_b = await x.store.get(f"session:{b['sessionId']}")
        norm = {"sessionId": "S", "createdAt": "T", "updatedAt": "T"}
        assert json.loads(raw_a) | norm == json.loads(raw_b) | norm
        assert raw_a.replace(a["sessionId"], "S").replace(a["createdAt"], "T") == raw_b.replace(
            b["sessionId"], "S"
        ).replace(b["createdAt"], "T")

    run(legacy_stack, stack_env, body)


@pytest.mark.parametrize(
    "record",
    [
        {"user_id": "USER", "agent_type": "human", "context": {"a": 1},
         "created_at": "2024-01-01T10:00:00.123456+00:00", "updated_at": "2024-01-02T00:00:00Z"},
        {"session_id": "other", "user_id": "USER", "agent_type": "ai", "created_at": 1704103200.5},
        {"user_id": "USER", "agent_type": "ai", "metadata": {"m": 1}, "created_at": 1704103200123,
         "updated_at": "2024-01-01T12:00:00.999999-02:00"},
        {"sessionId": "x", "userId": "USER", "createdAt": "2024-01-01T10:00:00.000Z"},
    ],
)  # fmt: skip
def test_stored_record_of_either_shape_is_served_identically_by_both(
    legacy_stack, stack_env, record
):
    async def body(x: Sides):
        me, sid = uid(), str(uuid.uuid4())
        rec = {k: (me if v == "USER" else v) for k, v in record.items()}
        await x.store.set(f"session:{sid}", js_dumps(rec).decode(), ex=600)
        await x.store.zadd(f"user_sessions:{me}", {sid: 1704103200000})
        h = x.tok(me)
        url = f"/api/sessions/{sid}"
        from_legacy = await x.legacy["session"].get(url, headers=h)
        assert from_legacy.status_code == 200
        same_response(await x.module["session"].get(url, headers=h), from_legacy)
        list_url = f"/api/sessions?userId={me}"
        same_response(
            await x.module["session"].get(list_url, headers=h),
            await x.legacy["session"].get(list_url, headers=h),
        )

    run(legacy_stack, stack_env, body)


@pytest.mark.parametrize("shape", ["python", "both"])
def test_module_writing_python_shape_stays_readable_by_legacy(legacy_stack, stack_env, shape):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        created = await x.module["session"].post(
            "/api/sessions", json={"metadata": {"k": "v"}}, headers=h
        )
        sid = created.json()["sessionId"]
        stored = json.loads(await x.store.get(f"session:{sid}"))
        assert "user_id" in stored and "created_at" in stored
        url = f"/api/sessions/{sid}"
        same_response(await x.legacy["session"].get(url, headers=h), created)
        patched = await x.module["session"].patch(url, json={"agent": "human"}, headers=h)
        same_response(await x.legacy["session"].get(url, headers=h), patched)
        list_url = f"/api/sessions?userId={me}"
        same_response(
            await x.legacy["session"].get(list_url, headers=h),
            await x.module["session"].get(list_url, headers=h),
        )
        # and the legacy side's update of it is read back by the module
        by_legacy = await x.legacy["session"].patch(url, json={"context": {"c": 1}}, headers=h)
        same_response(await x.module["session"].get(url, headers=h), by_legacy)

    run(legacy_stack, {**stack_env, "SESSION_WRITE_SHAPE": shape}, body)


def test_errors_have_the_same_status_and_code_on_both_sides(legacy_stack, stack_env):
    async def body(x: Sides):
        owner = uid()
        sid = (await x.legacy["session"].post("/api/sessions", headers=x.tok(owner))).json()[
            "sessionId"
        ]
        stranger = x.tok(uid())
        cases = [
            ("PUT", "/api/sessions", x.tok(owner), None),
            ("GET", "/api/nothing", {}, None),
            ("POST", "/api/sessions", {}, b"{}"),
            ("POST", "/api/sessions", {"Authorization": "bearer x"}, b"{}"),
            ("POST", "/api/sessions", x.tok(owner), b"{"),
            ("POST", "/api/sessions", x.tok(owner), b"[1]"),
            ("POST", "/api/sessions", x.tok(owner), b'{"userId": "someone"}'),
            ("POST", "/api/sessions", x.tok(owner), b"x" * 1_048_577),
            ("GET", f"/api/sessions/{sid}", stranger, None),
            ("GET", f"/api/sessions/{sid}/", x.tok(owner), None),
            ("GET", f"/api/sessions/{sid}//", x.tok(owner), None),
            ("GET", "/api/sessions/%E0%A4%A", x.tok(owner), None),
            ("PATCH", f"/api/sessions/{sid}", stranger, b'{"agent": "bot"}'),
            ("PATCH", f"/api/sessions/{sid}", stranger, b'{"agent": "human"}'),
            ("DELETE", f"/api/sessions/{uuid.uuid4()}", x.tok(owner, "admin"), None),
            ("GET", "/api/sessions?userId=", x.tok(owner), None),
            ("HEAD", "/health", {}, None),
        ]
        for method, path, headers, content in cases:
            a = await x.legacy["session"].request(method, path, headers=headers, content=content)
            b = await x.module["session"].request(method, path, headers=headers, content=content)
            assert (a.status_code, a.headers.get("content-type")) == (
                b.status_code, b.headers.get("content-type")), (method, path)  # fmt: skip
            if a.status_code >= 400:
                assert a.json()["error"]["code"] == b.json()["error"]["code"], (method, path)
            else:
                assert a.content == b.content, (method, path)

    run(legacy_stack, stack_env, body)


# --------------------------------------------------------------------------- ai


def test_conversation_continued_across_sides_keeps_its_history(legacy_stack, stack_env):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        sid = (await x.legacy["session"].post("/api/sessions", headers=h)).json()["sessionId"]
        turns = [("legacy", "first " + mark()), ("module", "second " + mark()),
                 ("legacy", "third " + mark()), ("module", "fourth " + mark())]  # fmt: skip
        for side, msg in turns:
            client = x.legacy["ai"] if side == "legacy" else x.module["ai"]
            r = await client.post("/api/ai/chat", json={"sessionId": sid, "message": msg},
                                  headers=h)  # fmt: skip
            assert r.status_code == 200, (side, r.text)
        history = await x.store.lrange(f"history:{sid}", 0, -1)
        expected = []
        for _, msg in turns:
            expected += [js_dumps({"role": "user", "content": msg}).decode(),
                         js_dumps({"role": "assistant", "content": "You said: " + msg}).decode()]  # fmt: skip
        assert history == expected
        recorded = httpx.get(f"{legacy_stack.provider}/_fake/requests", trust_env=False).json()
        last = [rec for rec in recorded["data"]
                if turns[-1][1] in json.dumps(rec.get("body"))][-1]  # fmt: skip
        assert [m["content"] for m in last["body"]["input"]["messages"][1:]] == [
            json.loads(item)["content"] for item in expected[:-1]
        ]

    run(legacy_stack, stack_env, body)


def test_chat_answers_are_byte_identical_from_both_sides(legacy_stack, stack_env):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        msg = "same question é😀 " + mark()
        answers = []
        for side in ("legacy", "module"):
            sid = (await x.legacy["session"].post("/api/sessions", headers=h)).json()["sessionId"]
            r = await x.__dict__[side]["ai"].post(
                "/api/ai/chat", json={"sessionId": sid, "message": msg}, headers=h
            )
            answers.append((r, sid))
        (a, sid_a), (b, sid_b) = answers
        assert a.status_code == b.status_code == 200
        assert a.headers["content-type"] == b.headers["content-type"]
        assert a.content.replace(sid_a.encode(), b"S") == b.content.replace(sid_b.encode(), b"S")

    run(legacy_stack, stack_env, body)


@pytest.mark.parametrize(
    "directive", ["", "[fake:midstream-error]", "[fake:stream-close]", "[fake:nousage]"]
)
def test_streams_are_event_for_event_identical_from_both_sides(legacy_stack, stack_env, directive):
    async def body(x: Sides):
        me = uid()
        h = x.tok(me)
        msg = f"stream me {mark()} {directive}"
        out = []
        for side in ("legacy", "module"):
            sid = (await x.legacy["session"].post("/api/sessions", headers=h)).json()["sessionId"]
            r = await x.__dict__[side]["ai"].post(
                "/api/ai/chat/stream", json={"sessionId": sid, "message": msg}, headers=h
            )
            out.append((r, await x.store.lrange(f"history:{sid}", 0, -1)))
        (a, hist_a), (b, hist_b) = out
        assert a.status_code == b.status_code == 200
        for name in ("content-type", "cache-control"):
            assert a.headers.get(name) == b.headers.get(name)
        ev_a = [json.loads(e[6:]) for e in a.text.split("\n\n") if e]
        ev_b = [json.loads(e[6:]) for e in b.text.split("\n\n") if e]
        if "error" in ev_a[-1]:
            ev_a[-1]["error"].pop("message")
            ev_b[-1]["error"].pop("message")
        assert ev_a == ev_b
        assert hist_a == hist_b

    run(legacy_stack, stack_env, body)


def test_ai_errors_have_the_same_status_and_code_on_both_sides(legacy_stack, stack_env):
    async def body(x: Sides):
        owner = uid()
        sid = (await x.legacy["session"].post("/api/sessions", headers=x.tok(owner))).json()[
            "sessionId"
        ]
        cases = [
            (x.tok(owner), {"sessionId": sid, "message": " \ufeff "}),
            (x.tok(owner), {"sessionId": sid, "message": "😀" * 2001}),
            (x.tok(owner), {"sessionId": "", "message": "hi"}),
            (x.tok(owner), {"sessionId": str(uuid.uuid4()), "message": "hi"}),
            (x.tok(uid()), {"sessionId": sid, "message": "hi"}),
            (x.tok(owner), {"sessionId": sid, "message": "x [fake:status=503]"}),
            (x.tok(owner), {"sessionId": sid, "message": "x [fake:malformed]"}),
            ({}, {"sessionId": sid, "message": "hi"}),
        ]
        for path in ("/api/ai/chat", "/api/ai/chat/stream"):
            for headers, payload in cases:
                a = await x.legacy["ai"].post(path, json=payload, headers=headers)
                b = await x.module["ai"].post(path, json=payload, headers=headers)
                assert (a.status_code, a.headers["content-type"]) == (
                    b.status_code, b.headers["content-type"]), (path, payload)  # fmt: skip
                assert a.json()["error"]["code"] == b.json()["error"]["code"]
        assert await x.store.lrange(f"history:{sid}", 0, -1) == []

    run(legacy_stack, stack_env, body)
