"""§3 ai-service and the §6 ai-service edge rules, against the fake provider.

The fake provider (``deploy/legacy/fake-dashscope.js``) answers ``"You said: " + <last
user message>``; streaming splits that reply after each space into pieces, after a first
empty piece; usage counts UTF-16 units of all message contents (input) and pieces
(output, cumulative when streaming). Fault directives in the message select failures.
Every test marks its messages with a unique marker to find its provider requests.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from contract_helpers import (
    JSON_CT,
    PROVIDER_PATH,
    SYSTEM_PROMPT,
    assert_error,
    auth,
    create_session,
    sse_events,
    utf16_len,
)

MODEL = "qwen-turbo"  # the stack does not set DASHSCOPE_MODEL: the default
DAY = 86400
CHAT = "/api/ai/chat"
STREAM = "/api/ai/chat/stream"
ENDPOINTS = [CHAT, STREAM]


@pytest.fixture
def rdb(target):
    client = target.stack.redis()
    yield client
    client.close()


@pytest.fixture
def session(target, http, token, uid):
    """A fresh session of a fresh customer: ``(sessionId, token)``."""
    tok = token(uid())
    return create_session(http, target.session, tok)["sessionId"], tok


def pieces(reply: str) -> list[str]:
    """The fake provider's split: after each space."""
    out, start = [], 0
    for i, ch in enumerate(reply):
        if ch == " ":
            out.append(reply[start : i + 1])
            start = i + 1
    if start < len(reply):
        out.append(reply[start:])
    return out


def expected_usage(messages: list[dict[str, str]]) -> dict[str, int]:
    reply = "You said: " + messages[-1]["content"]
    return {
        "inputTokens": sum(utf16_len(m["content"]) for m in messages),
        "outputTokens": len(pieces(reply)),
    }


def chat(http: httpx.Client, target, tok: str, body: Any, path: str = CHAT) -> httpx.Response:
    return http.post(target.ai + path, json=body, headers=auth(tok))


def history(rdb, sid: str) -> list[Any]:
    return [json.loads(x) for x in rdb.lrange(f"history:{sid}", 0, -1)]


def item(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class Stream:
    """A finished SSE answer: status, headers, raw text, events and their arrival times."""

    def __init__(self, r: httpx.Response, raw: str, times: list[float], t0: float) -> None:
        self.status = r.status_code
        self.headers = r.headers
        self.raw = raw
        self.times = times
        self.t0 = t0
        self.events = sse_events(raw) if r.status_code == 200 else []
        self.json = None if r.status_code == 200 else json.loads(raw)


def stream(http: httpx.Client, target, tok: str, body: Any) -> Stream:
    """POST to the streaming endpoint and read it to the end, timing each event."""
    t0 = time.monotonic()
    times: list[float] = []
    buf = b""
    with http.stream("POST", target.ai + STREAM, json=body, headers=auth(tok)) as r:
        for chunk in r.iter_raw():
            buf += chunk
            now = time.monotonic()
            while len(times) < buf.count(b"\n\n"):
                times.append(now)
    return Stream(r, buf.decode("utf-8"), times, t0)


def assert_error_event(ev: Any) -> None:
    assert set(ev) == {"error"}, ev
    assert set(ev["error"]) == {"code", "message"}, ev
    assert ev["error"]["code"] == "upstream_error"
    assert isinstance(ev["error"]["message"], str)


# --------------------------------------------------------------------------- validation


BAD_BODIES: dict[str, dict[str, Any]] = {
    "missing_message": {},
    "message_null": {"message": None},
    "message_number": {"message": 5},
    "message_list": {"message": ["hi"]},
    "message_empty": {"message": ""},
    "message_spaces": {"message": "   "},
    "message_js_whitespace": {"message": " \t\n\v\f\r\u00a0\u1680\u2000\u200a\u2028\u2029"},
    "message_ideographic_space": {"message": "\u3000\u202f\u205f"},
    "message_bom_only": {"message": "\ufeff"},
    "message_bom_and_spaces": {"message": " \ufeff \ufeff "},
    "message_4001": {"message": "a" * 4001},
    "message_2001_emoji": {"message": "😀" * 2001},
    "message_4001_after_trim": {"message": " " + "b" * 4001 + " "},
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
@pytest.mark.parametrize("path", ENDPOINTS)
def test_invalid_message_is_400(target, http, session, rdb, path, case):
    sid, tok = session
    r = chat(http, target, tok, {"sessionId": sid, **BAD_BODIES[case]}, path)
    assert_error(r, 400, "bad_request")
    assert rdb.exists(f"history:{sid}") == 0


@pytest.mark.parametrize("session_id", [None, "", 5, ["x"], {}])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_missing_or_bad_session_id_is_400(target, http, token, path, session_id):
    body: dict[str, Any] = {"message": "hello"}
    if session_id is not None:
        body["sessionId"] = session_id
    assert_error(chat(http, target, token(), body, path), 400, "bad_request")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unknown_session_is_404(target, http, token, path):
    r = chat(http, target, token(), {"sessionId": str(uuid.uuid4()), "message": "hi"}, path)
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_invalid_message_on_unknown_session_is_400_before_404(target, http, token, path):
    r = chat(http, target, token(), {"sessionId": str(uuid.uuid4()), "message": " "}, path)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_other_customers_session_is_403(target, http, session, token, uid, marker, path):
    sid, _ = session
    mark = marker()
    r = chat(http, target, token(uid()), {"sessionId": sid, "message": mark}, path)
    assert_error(r, 403, "forbidden")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_invalid_message_on_other_customers_session_is_400_before_403(
    target, http, session, token, uid, path
):
    sid, _ = session
    r = chat(http, target, token(uid()), {"sessionId": sid, "message": ""}, path)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_staff_may_chat_on_any_session(target, http, session, token, uid, marker, role):
    sid, _ = session
    msg = f"staff {marker()}"
    r = chat(http, target, token(uid(), role), {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.json()["reply"] == "You said: " + msg


def test_python_shape_session_is_usable_by_its_owner_only(target, http, token, uid, rdb, marker):
    me = uid()
    sid = str(uuid.uuid4())
    record = {
        "user_id": me,
        "agent_type": "ai",
        "context": {},
        "metadata": {},
        "created_at": "2024-01-01T10:00:00.123456+00:00",
        "updated_at": "2024-01-01T10:00:00.123456+00:00",
    }
    rdb.set(f"session:{sid}", json.dumps(record), ex=DAY)
    msg = f"py {marker()}"
    r = chat(http, target, token(me), {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    r = chat(http, target, token(uid()), {"sessionId": sid, "message": msg})
    assert_error(r, 403, "forbidden")


ACCEPTED_MESSAGES = {
    "4000_ascii": "a" * 4000,
    "2000_emoji": "😀" * 2000,
    "4000_with_padding": "  \n" + "c" * 4000 + "\ufeff\t ",
    "zero_width_space": "\u200b",  # not whitespace for JS trim
    "unit_separator": "\x1f",  # Python's str.strip() would strip it, JS trim does not
    "next_line": "\x85",  # likewise
    "one_char": "x",
}


@pytest.mark.parametrize("case", list(ACCEPTED_MESSAGES))
def test_message_at_or_inside_limits_is_accepted_and_sent_exactly(target, http, session, rdb, case):
    sid, tok = session
    msg = ACCEPTED_MESSAGES[case]
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.json()["reply"] == "You said: " + msg
    assert history(rdb, sid) == [item("user", msg), item("assistant", "You said: " + msg)]
    assert r.json()["usage"] == expected_usage([item("system", SYSTEM_PROMPT), item("user", msg)])


def test_message_is_stored_and_sent_exactly_as_given(
    target, http, session, rdb, provider_requests, marker
):
    sid, tok = session
    msg = f" \ufeff Hello  {marker()} \n\t"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.json()["reply"] == "You said: " + msg
    (req,) = provider_requests(msg)
    assert req["body"]["input"]["messages"][-1] == item("user", msg)
    assert history(rdb, sid) == [item("user", msg), item("assistant", "You said: " + msg)]


def test_unknown_fields_in_chat_body_are_ignored(target, http, session, marker):
    sid, tok = session
    msg = marker()
    body = {"sessionId": sid, "message": msg, "model": "other", "history": [1], "stream": True}
    r = chat(http, target, tok, body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MODEL


# --------------------------------------------------------------------------- success


def test_chat_success_answers_contract_body(target, http, session, marker):
    sid, tok = session
    msg = f"Hello there {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {
        "sessionId": sid,
        "reply": "You said: " + msg,
        "model": MODEL,
        "usage": expected_usage([item("system", SYSTEM_PROMPT), item("user", msg)]),
    }


def test_chat_sends_exact_provider_request(target, http, session, provider_requests, marker):
    sid, tok = session
    msg = f"exact {marker()}"
    assert chat(http, target, tok, {"sessionId": sid, "message": msg}).status_code == 200
    (req,) = provider_requests(msg)
    assert req["path"] == PROVIDER_PATH
    assert req["headers"]["authOk"] is True
    assert req["headers"]["content-type"].startswith("application/json")
    assert req["body"] == {
        "model": MODEL,
        "input": {"messages": [item("system", SYSTEM_PROMPT), item("user", msg)]},
        "parameters": {"result_format": "message"},
    }


def test_chat_appends_history_with_ttl(target, http, session, rdb, marker):
    sid, tok = session
    msg = f"remember {marker()}"
    assert chat(http, target, tok, {"sessionId": sid, "message": msg}).status_code == 200
    assert rdb.type(f"history:{sid}") == b"list"
    raw = rdb.lrange(f"history:{sid}", 0, -1)
    assert [json.loads(x) for x in raw] == [
        item("user", msg),
        item("assistant", "You said: " + msg),
    ]
    assert all(set(json.loads(x)) == {"role", "content"} for x in raw)
    assert DAY - 10 <= rdb.ttl(f"history:{sid}") <= DAY


def test_second_chat_sends_history_and_resets_ttl(
    target, http, session, rdb, provider_requests, marker
):
    sid, tok = session
    first, second = f"first {marker()}", f"second {marker()}"
    assert chat(http, target, tok, {"sessionId": sid, "message": first}).status_code == 200
    rdb.expire(f"history:{sid}", 100)
    r = chat(http, target, tok, {"sessionId": sid, "message": second})
    assert r.status_code == 200
    messages = [
        item("system", SYSTEM_PROMPT),
        item("user", first),
        item("assistant", "You said: " + first),
        item("user", second),
    ]
    (req,) = provider_requests(second)
    assert req["body"]["input"]["messages"] == messages
    assert r.json()["usage"] == expected_usage(messages)
    assert len(history(rdb, sid)) == 4
    assert DAY - 10 <= rdb.ttl(f"history:{sid}") <= DAY


def test_prompt_takes_last_20_history_items_and_skips_invalid_ones(
    target, http, session, rdb, provider_requests, marker
):
    sid, tok = session
    older = [json.dumps(item("user", f"old {i}")) for i in range(5)]
    invalid = [
        "not json",
        "[1, 2]",
        '"a string"',
        "null",
        json.dumps({"role": "user"}),
        json.dumps({"content": "no role"}),
        json.dumps({"role": "user", "content": 5}),
        json.dumps({"role": "robot", "content": "bad role"}),
    ]
    valid = [json.dumps(item("assistant" if i % 2 else "user", f"recent {i}")) for i in range(12)]
    last20 = valid[:6] + invalid + valid[6:]
    rdb.rpush(f"history:{sid}", *older, *last20)
    msg = f"with history {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    (req,) = provider_requests(msg)
    sent = req["body"]["input"]["messages"]
    assert sent == [
        item("system", SYSTEM_PROMPT),
        *[json.loads(v) for v in valid],
        item("user", msg),
    ]
    assert r.json()["usage"] == expected_usage(sent)


def test_history_items_are_sent_with_role_and_content_only(
    target, http, session, rdb, provider_requests, marker
):
    sid, tok = session
    rdb.rpush(f"history:{sid}", json.dumps({"role": "user", "content": "x", "ts": 1}))
    msg = marker()
    assert chat(http, target, tok, {"sessionId": sid, "message": msg}).status_code == 200
    (req,) = provider_requests(msg)
    assert req["body"]["input"]["messages"][1] == item("user", "x")


def test_history_is_trimmed_to_last_50_items(target, http, session, rdb, marker):
    sid, tok = session
    old = [json.dumps(item("user", f"h{i}")) for i in range(49)]
    rdb.rpush(f"history:{sid}", *old)
    msg = marker()
    assert chat(http, target, tok, {"sessionId": sid, "message": msg}).status_code == 200
    h = history(rdb, sid)
    assert len(h) == 50
    assert h[:48] == [json.loads(x) for x in old[1:]]
    assert h[48:] == [item("user", msg), item("assistant", "You said: " + msg)]


def test_missing_provider_usage_gives_zero_counts(target, http, session, marker):
    sid, tok = session
    msg = f"[fake:nousage] {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"inputTokens": 0, "outputTokens": 0}
    assert r.json()["reply"] == "You said: " + msg


# --------------------------------------------------------------------------- failures

FAILURES = [
    "[fake:status=500]",
    "[fake:status=401]",
    "[fake:status=429]",
    "[fake:status=400]",
    "[fake:malformed]",
    "[fake:nochoices]",
]


@pytest.mark.parametrize("directive", FAILURES)
def test_provider_failure_is_502_and_appends_nothing(
    target, http, session, rdb, provider_requests, marker, directive
):
    sid, tok = session
    rdb.rpush(f"history:{sid}", json.dumps(item("user", "before")))
    msg = f"{directive} {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert_error(r, 502, "upstream_error")
    assert history(rdb, sid) == [item("user", "before")]
    assert len(provider_requests(msg)) >= 1


def test_provider_hang_is_502_after_the_timeout(target, http, session, rdb, marker):
    sid, tok = session
    msg = f"[fake:hang] {marker()}"
    t0 = time.monotonic()
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    elapsed = time.monotonic() - t0
    assert_error(r, 502, "upstream_error")
    assert rdb.exists(f"history:{sid}") == 0
    # The test stack's provider timeout is 3 s (the contract's 30 s, shortened).
    assert 2.5 <= elapsed < 10, elapsed


def test_provider_slow_but_in_time_is_success(target, http, session, marker):
    sid, tok = session
    msg = f"[fake:delay=300] {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg})
    assert r.status_code == 200, r.text
    assert r.json()["reply"] == "You said: " + msg


# --------------------------------------------------------------------------- streaming


def test_stream_success_events_headers_and_framing(target, http, session, rdb, marker):
    sid, tok = session
    msg = f"stream me  please {marker()}"
    reply = "You said: " + msg
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200, s.raw
    assert s.headers["content-type"] == "text/event-stream"
    assert s.headers["cache-control"] == "no-cache"
    expected = [{"delta": p} for p in pieces(reply)]
    expected.append(
        {
            "done": True,
            "reply": reply,
            "usage": expected_usage([item("system", SYSTEM_PROMPT), item("user", msg)]),
        }
    )
    assert s.events == expected
    assert "".join(e["delta"] for e in s.events[:-1]) == reply
    assert history(rdb, sid) == [item("user", msg), item("assistant", reply)]
    assert DAY - 10 <= rdb.ttl(f"history:{sid}") <= DAY


def test_stream_sends_and_stores_message_exactly_as_given(
    target, http, session, rdb, provider_requests, marker
):
    sid, tok = session
    msg = f"\ufeff  emoji 😀 and\ttab {marker()}  \n"
    reply = "You said: " + msg
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200, s.raw
    assert "".join(e["delta"] for e in s.events[:-1]) == reply
    assert s.events[-1]["reply"] == reply
    (req,) = provider_requests(msg)
    assert req["body"]["input"]["messages"][-1] == item("user", msg)
    assert history(rdb, sid) == [item("user", msg), item("assistant", reply)]


def test_stream_every_event_is_one_data_line_and_a_blank_line(target, http, session, marker):
    sid, tok = session
    msg = f"frame check {marker()}"
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200
    blocks = s.raw.split("\n\n")
    assert blocks[-1] == ""
    for block in blocks[:-1]:
        assert block.startswith("data: "), repr(block)
        assert "\n" not in block and "\r" not in block
        json.loads(block[len("data: ") :])


def test_stream_sends_exact_provider_request(target, http, session, provider_requests, marker):
    sid, tok = session
    msg = f"stream request {marker()}"
    assert stream(http, target, tok, {"sessionId": sid, "message": msg}).status == 200
    (req,) = provider_requests(msg)
    assert req["path"] == PROVIDER_PATH
    headers = req["headers"]
    assert headers["authOk"] is True
    assert headers.get("x-dashscope-sse") == "enable" or "text/event-stream" in headers.get(
        "accept", ""
    )
    assert req["body"] == {
        "model": MODEL,
        "input": {"messages": [item("system", SYSTEM_PROMPT), item("user", msg)]},
        "parameters": {"result_format": "message", "incremental_output": True},
    }


def test_stream_done_usage_is_last_provider_events_usage(target, http, session, rdb, marker):
    sid, tok = session
    rdb.rpush(f"history:{sid}", json.dumps(item("assistant", "earlier 😀")))
    msg = f"count 😀 me {marker()}"
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    messages = [
        item("system", SYSTEM_PROMPT),
        item("assistant", "earlier 😀"),
        item("user", msg),
    ]
    assert s.events[-1]["usage"] == expected_usage(messages)
    assert s.events[-1]["usage"]["outputTokens"] == len(s.events) - 1


def test_stream_without_provider_usage_reports_zero(target, http, session, marker):
    sid, tok = session
    msg = f"[fake:nousage] {marker()}"
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.events[-1] == {
        "done": True,
        "reply": "You said: " + msg,
        "usage": {"inputTokens": 0, "outputTokens": 0},
    }


def test_stream_first_event_arrives_before_provider_finishes(target, http, session, marker):
    sid, tok = session
    msg = f"[fake:delay=300] {marker()}"
    n = len(pieces("You said: " + msg))  # 4 pieces, each after 300 ms
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200
    assert len(s.events) == n + 1
    first, last = s.times[0], s.times[-1]
    # The provider needs n * 300 ms; the first delta must not wait for the end.
    assert last - first >= (n - 1) * 0.3 * 0.7, (first - s.t0, last - s.t0)
    assert first - s.t0 < n * 0.3, first - s.t0


@pytest.mark.parametrize(
    "directive", ["[fake:status=500]", "[fake:status=401]", "[fake:status=429]", "[fake:malformed]"]
)
def test_stream_failure_before_start_is_plain_json_502(
    target, http, session, rdb, marker, directive
):
    sid, tok = session
    msg = f"{directive} {marker()}"
    r = chat(http, target, tok, {"sessionId": sid, "message": msg}, STREAM)
    assert_error(r, 502, "upstream_error")
    assert rdb.exists(f"history:{sid}") == 0


def test_stream_provider_hang_before_start_is_plain_json_502(target, http, session, marker):
    sid, tok = session
    t0 = time.monotonic()
    r = chat(http, target, tok, {"sessionId": sid, "message": f"[fake:hang] {marker()}"}, STREAM)
    assert_error(r, 502, "upstream_error")
    assert 2.5 <= time.monotonic() - t0 < 10


# directive -> how many pieces the fake sends before failing
MIDSTREAM = {
    "[fake:midstream-error]": 2,
    "[fake:stream-close]": 2,
    "[fake:stream-garbage]": 1,
    "[fake:nochoices]": 0,
}


@pytest.mark.parametrize("directive", list(MIDSTREAM))
def test_stream_failure_after_start_ends_with_error_event_and_no_history(
    target, http, session, rdb, marker, directive
):
    sid, tok = session
    rdb.rpush(f"history:{sid}", json.dumps(item("user", "before")))
    msg = f"{directive} {marker()}"
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200, s.raw
    assert s.headers["content-type"] == "text/event-stream"
    expected_deltas = [{"delta": p} for p in pieces("You said: " + msg)[: MIDSTREAM[directive]]]
    assert s.events[:-1] == expected_deltas
    assert_error_event(s.events[-1])
    assert history(rdb, sid) == [item("user", "before")]


def test_stream_stall_after_start_ends_with_error_event_after_timeout(
    target, http, session, rdb, marker
):
    sid, tok = session
    msg = f"[fake:stream-stall] {marker()}"
    s = stream(http, target, tok, {"sessionId": sid, "message": msg})
    assert s.status == 200
    assert s.events[:-1] == [{"delta": "You "}]
    assert_error_event(s.events[-1])
    # 30 s in production, the stack's 3 s provider timeout here.
    assert 2.5 <= s.times[-1] - s.times[0] < 10
    assert rdb.exists(f"history:{sid}") == 0
