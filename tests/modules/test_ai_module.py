"""The ai module in process, talking to the legacy stack's fake DashScope provider."""

import asyncio
import json
import uuid

import httpx
import pytest
from module_helpers import (
    JSON_CT,
    assert_error,
    auth,
    lifespan,
    module_env,
    serve_many,
    token,
)

from modules.common.jsfmt import js_dumps
from modules.common.store import open_store

SYSTEM_PROMPT = "You are a helpful customer service assistant."
TIMEOUT_MS = 1500


def uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def mark() -> str:
    return "mk-" + uuid.uuid4().hex[:12]


@pytest.fixture
def ai_env(legacy_stack, backend_url):
    return module_env(
        backend_url,
        DASHSCOPE_BASE_URL=legacy_stack.provider,
        DASHSCOPE_API_KEY=legacy_stack.env["DASHSCOPE_API_KEY"],
        DASHSCOPE_TIMEOUT_MS=str(TIMEOUT_MS),
    )


def provider_requests(legacy_stack, marker):
    r = httpx.get(f"{legacy_stack.provider}/_fake/requests", trust_env=False, timeout=5)
    out = []
    for rec in r.json()["data"]:
        msgs = (rec.get("body") or {}).get("input", {}).get("messages", []) if isinstance(
            rec.get("body"), dict) else []  # fmt: skip
        if msgs and marker in str(msgs[-1].get("content")):
            out.append(rec)
    return out


def run(env, fn):
    async def main():
        async with serve_many(["session", "ai"], env) as c, open_store(env.get("REDIS_URL")) as s:
            await fn(c["session"], c["ai"], s)

    asyncio.run(main())


async def new_session(session_client, me):
    r = await session_client.post("/api/sessions", headers=auth(token(me)))
    assert r.status_code == 201
    return r.json()["sessionId"]


def sse(raw: bytes) -> list:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ") and "\n" not in block, block
            out.append(json.loads(block[6:]))
    return out


# --------------------------------------------------------------------------- plain chat


def test_chat_answers_reply_model_usage_and_appends_history(ai_env, legacy_stack):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        msg = f"Hello {mark()} é😀"
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": msg},
                          headers=auth(token(me)))  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"] == JSON_CT
        reply = "You said: " + msg
        sent = provider_requests(legacy_stack, msg)[-1]
        assert sent["authOk"] is True
        assert sent["body"]["model"] == "qwen-turbo"
        assert sent["body"]["parameters"] == {"result_format": "message"}
        assert sent["body"]["input"]["messages"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": msg},
        ]
        in_tokens = len(SYSTEM_PROMPT) + len(msg.encode("utf-16-le")) // 2
        assert r.content == js_dumps({
            "sessionId": sid, "reply": reply, "model": "qwen-turbo",
            "usage": {"inputTokens": in_tokens, "outputTokens": len(reply.split(" "))},
        })  # fmt: skip
        assert await store.lrange(f"history:{sid}", 0, -1) == [
            js_dumps({"role": "user", "content": msg}).decode(),
            js_dumps({"role": "assistant", "content": reply}).decode(),
        ]
        assert 86_000_000 < await store.pttl(f"history:{sid}") <= 86_400_000

    run(ai_env, body)


def test_prompt_takes_last_20_history_items_skipping_invalid_and_keeps_50(ai_env, legacy_stack):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        items = [js_dumps({"role": "user" if i % 2 else "assistant", "content": f"h{i}"}).decode()
                 for i in range(60)]  # fmt: skip
        items[-1] = "not json"
        items[-2] = js_dumps({"role": "system", "content": "x"}).decode()
        items[-3] = js_dumps({"role": "user", "content": 5}).decode()
        await store.rpush(f"history:{sid}", *items)
        msg = "next " + mark()
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": msg},
                          headers=auth(token(me)))  # fmt: skip
        assert r.status_code == 200
        sent = provider_requests(legacy_stack, msg)[-1]["body"]["input"]["messages"]
        assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": msg}
        assert [m["content"] for m in sent[1:-1]] == [f"h{i}" for i in range(40, 57)]
        history = await store.lrange(f"history:{sid}", 0, -1)
        assert len(history) == 50 and history[-1].endswith('"You said: ' + msg + '"}')

    run(ai_env, body)


@pytest.mark.parametrize(
    "payload",
    [{}, {"sessionId": "", "message": "hi"}, {"sessionId": 5, "message": "hi"},
     {"sessionId": "s", "message": 5}, {"sessionId": "s", "message": " \ufeff\u3000 "},
     {"sessionId": "s", "message": "😀" * 2000 + "a"}, {"sessionId": "s"}],
)  # fmt: skip
def test_bad_request_body_is_400(ai_env, payload):
    async def body(sess, ai, store):
        r = await ai.post("/api/ai/chat", json=payload, headers=auth(token(uid())))
        assert_error(r, 400, "bad_request")

    run(ai_env, body)


def test_missing_session_is_404_and_foreign_is_403(ai_env):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        for path in ("/api/ai/chat", "/api/ai/chat/stream"):
            r = await ai.post(path, json={"sessionId": str(uuid.uuid4()), "message": "hi"},
                              headers=auth(token(me)))  # fmt: skip
            assert_error(r, 404, "not_found")
            r = await ai.post(path, json={"sessionId": sid, "message": "hi"},
                              headers=auth(token(uid())))  # fmt: skip
            assert_error(r, 403, "forbidden")
            assert_error(await ai.post(path, json={}), 401, "unauthorized")

    run(ai_env, body)


def test_message_of_2000_emoji_is_valid_and_sent_untrimmed(ai_env, legacy_stack):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        msg = "\ufeff " + mark() + "😀" * 1990 + "  "
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": msg},
                          headers=auth(token(me, "customer")))  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["reply"] == "You said: " + msg

    run(ai_env, body)


@pytest.mark.parametrize(
    "directive",
    ["[fake:status=500]", "[fake:status=401]", "[fake:status=429]", "[fake:malformed]",
     "[fake:nochoices]", "[fake:hang]"],
)  # fmt: skip
def test_provider_failure_is_502_and_appends_nothing(ai_env, directive):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": f"x {directive}"},
                          headers=auth(token(me)))  # fmt: skip
        assert_error(r, 502, "upstream_error")
        assert await store.lrange(f"history:{sid}", 0, -1) == []

    run(ai_env, body)


def test_missing_usage_gives_zero_token_counts(ai_env):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": "[fake:nousage]"},
                          headers=auth(token(me)))  # fmt: skip
        assert r.json()["usage"] == {"inputTokens": 0, "outputTokens": 0}

    run(ai_env, body)


def test_wrong_provider_key_is_502(ai_env):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        r = await ai.post("/api/ai/chat", json={"sessionId": sid, "message": "hi"},
                          headers=auth(token(me)))  # fmt: skip
        assert_error(r, 502, "upstream_error")

    run({**ai_env, "DASHSCOPE_API_KEY": "sk-wrong"}, body)


def test_unreachable_provider_is_502(ai_env):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        for path in ("/api/ai/chat", "/api/ai/chat/stream"):
            r = await ai.post(path, json={"sessionId": sid, "message": "hi"},
                              headers=auth(token(me)))  # fmt: skip
            assert_error(r, 502, "upstream_error")

    run({**ai_env, "DASHSCOPE_BASE_URL": "http://127.0.0.1:9"}, body)


# --------------------------------------------------------------------------- streaming


def test_stream_relays_deltas_then_done_and_appends_history(ai_env, legacy_stack):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        msg = "stream please " + mark()
        r = await ai.post("/api/ai/chat/stream", json={"sessionId": sid, "message": msg},
                          headers=auth(token(me)))  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache"
        events = sse(r.content)
        reply = "You said: " + msg
        pieces = [e["delta"] for e in events[:-1]]
        assert "".join(pieces) == reply and all(pieces)
        assert pieces == ["You ", "said: ", "stream ", "please ", msg.split(" ")[-1]]
        assert events[-1] == {
            "done": True, "reply": reply,
            "usage": {"inputTokens": len(SYSTEM_PROMPT) + len(msg), "outputTokens": 5},
        }  # fmt: skip
        sent = provider_requests(legacy_stack, msg)[-1]
        assert sent["headers"]["x-dashscope-sse"] == "enable"
        assert sent["body"]["parameters"] == {"result_format": "message",
                                              "incremental_output": True}  # fmt: skip
        assert len(await store.lrange(f"history:{sid}", 0, -1)) == 2

    run(ai_env, body)


def test_stream_events_are_sent_as_the_provider_sends_them(ai_env):
    # httpx.ASGITransport buffers whole responses: call the ASGI app itself and time
    # every body message it sends.
    async def main():
        from modules import ModuleContext, get_factory

        session_app = get_factory("session")(ModuleContext(env=ai_env))
        ai_app = get_factory("ai")(ModuleContext(env=ai_env))
        async with lifespan(session_app), lifespan(ai_app):
            transport = httpx.ASGITransport(app=session_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as sess:
                me = uid()
                sid = await new_session(sess, me)
            loop = asyncio.get_running_loop()
            body = js_dumps({"sessionId": sid, "message": "a b c [fake:delay=150]"})
            sent: list[tuple[float, dict]] = []
            done = asyncio.Event()
            requests = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                if requests:
                    return requests.pop()
                await done.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append((loop.time(), message))
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    done.set()

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": "/api/ai/chat/stream",
                "raw_path": b"/api/ai/chat/stream", "query_string": b"", "root_path": "",
                "headers": [(b"authorization", f"Bearer {token(me)}".encode())],
                "client": ("127.0.0.1", 1), "server": ("module", 80),
            }  # fmt: skip
            await ai_app(scope, receive, send)
        bodies = [(t, m["body"]) for t, m in sent if m["type"] == "http.response.body"]
        assert [b for _, b in bodies][:2] == [b'data: {"delta":"You "}\n\n',
                                              b'data: {"delta":"said: "}\n\n']  # fmt: skip
        assert len(bodies) == 7  # 6 pieces, then done
        assert bodies[-1][0] - bodies[0][0] > 0.5  # relayed as they came, not at the end

    asyncio.run(main())


@pytest.mark.parametrize(
    "directive",
    ["[fake:midstream-error]", "[fake:stream-close]", "[fake:stream-garbage]",
     "[fake:stream-stall]", "[fake:nochoices]"],
)  # fmt: skip
def test_stream_failure_after_start_ends_with_error_event_and_no_history(ai_env, directive):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        r = await ai.post("/api/ai/chat/stream", headers=auth(token(me)),
                          json={"sessionId": sid, "message": f"one two three {directive}"})  # fmt: skip
        assert r.status_code == 200
        events = sse(r.content)
        assert set(events[-1]) == {"error"} and events[-1]["error"]["code"] == "upstream_error"
        assert all(set(e) == {"delta"} for e in events[:-1])
        assert await store.lrange(f"history:{sid}", 0, -1) == []

    run(ai_env, body)


@pytest.mark.parametrize("directive", ["[fake:status=500]", "[fake:hang]", "[fake:malformed]"])
def test_stream_failure_before_start_is_plain_json_502(ai_env, directive):
    async def body(sess, ai, store):
        me = uid()
        sid = await new_session(sess, me)
        r = await ai.post("/api/ai/chat/stream", headers=auth(token(me)),
                          json={"sessionId": sid, "message": f"x {directive}"})  # fmt: skip
        assert_error(r, 502, "upstream_error")

    run(ai_env, body)
