"""chat-core's WebSocket ``/ws`` (legacy-api.md §4 "WebSocket", §6 chat-core).

Frames between instances travel over Redis pub/sub on ``chat:session:{sessionId}`` as
``{"frame": <frame>, "exclude": <socket id>|null}``; the tests below also act as such a
peer through ``target.stack.redis()``.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from chat_helpers import (
    assert_error_frame,
    assert_message,
    assert_silent,
    create_session,
    join,
    list_messages,
    make_human,
    read_session,
    recv,
    send,
    send_ok,
    ws_open,
)
from contract_helpers import UUID4
from websockets.exceptions import ConnectionClosed, InvalidStatus


def _assert_closed(ws, code: int) -> None:
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd is not None, info.value
    assert info.value.rcvd.code == code


def _session(http, target, token, uid, *, human: bool = False):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    if human:
        make_human(http, target, tok, sid)
    return u, tok, sid


def _channel(sid: str) -> str:
    return f"chat:session:{sid}"


def _subscribe(target, sid):
    pubsub = target.stack.redis().pubsub()
    pubsub.subscribe(_channel(sid))
    first = pubsub.get_message(timeout=5)
    assert first is not None and first["type"] == "subscribe"
    return pubsub


def _next_publication(pubsub) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = pubsub.get_message(timeout=deadline - time.monotonic())
        if m is not None and m["type"] == "message":
            return dict(json.loads(m["data"]))
    raise AssertionError("nothing published within 5 s")


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("case", ["missing", "garbage", "wrong-secret", "expired", "bad-role"])
def test_bad_or_missing_token_is_accepted_then_closed_4401(target, token, case):
    tok = {
        "missing": None,
        "garbage": "not.a.jwt",
        "wrong-secret": token(secret="another-secret-0123456789"),
        "expired": token(exp_in=-60),
        "bad-role": token(role="superuser"),
    }[case]
    with ws_open(target, tok) as ws:
        _assert_closed(ws, 4401)


def test_token_in_authorization_header_is_accepted(target, token):
    with ws_open(target, None, headers={"Authorization": f"Bearer {token()}"}) as ws:
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_bad_header_token_closes_4401(target, token):
    with ws_open(target, None, headers={"Authorization": "Bearer nope"}) as ws:
        _assert_closed(ws, 4401)


def test_query_token_wins_over_header(target, token):
    with ws_open(target, "bad-token", headers={"Authorization": f"Bearer {token()}"}) as ws:
        _assert_closed(ws, 4401)
    with ws_open(target, token(), headers={"Authorization": "Bearer bad-token"}) as ws:
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


# --------------------------------------------------------------------------- ping, join


def test_ping_answers_pong(target, token):
    with ws_open(target, token()) as ws:
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}
        send(ws, {"type": "ping", "extra": [1, 2]})
        assert recv(ws) == {"type": "pong"}


def test_join_own_session_answers_joined(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    with ws_open(target, tok) as ws:
        send(ws, {"type": "join", "sessionId": sid})
        assert recv(ws) == {"type": "joined", "sessionId": sid}


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_staff_may_join_any_session(target, http, token, uid, role):
    _, _, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid(), role=role)) as ws:
        join(ws, sid)


def test_join_someone_elses_session_is_forbidden_and_socket_stays_open(target, http, token, uid):
    _, _, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid())) as ws:
        send(ws, {"type": "join", "sessionId": sid})
        assert_error_frame(recv(ws), "forbidden")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_forbidden_join_does_not_join(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid, human=True)
    with ws_open(target, token(sub=uid())) as intruder:
        send(intruder, {"type": "join", "sessionId": sid})
        assert_error_frame(recv(intruder), "forbidden")
        send_ok(http, target, tok, sid, "private")
        assert_silent(intruder, 0.5)


# --------------------------------------------------------------------------- message


@pytest.mark.parametrize(
    "client_msg_id",
    ["c-1", 42, 1.5, True, None, {"a": [1, None, "x"]}, [], ""],
    ids=["string", "int", "float", "bool", "null", "object", "list", "empty"],
)
def test_message_ack_echoes_client_msg_id_as_any_json_value(
    target, http, token, uid, client_msg_id
):
    _, _, sid = _session(http, target, token, uid)
    staff = uid()
    with ws_open(target, token(sub=staff, role="agent")) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "hi", "clientMsgId": client_msg_id})
        ack = recv(ws)
        assert set(ack) == {"type", "clientMsgId", "message"}
        assert ack["type"] == "ack"
        assert ack["clientMsgId"] == client_msg_id
        assert type(ack["clientMsgId"]) is type(client_msg_id)
        assert_message(ack["message"], session_id=sid, sender="agent", sender_id=staff, text="hi")
        assert recv(ws) == {"type": "message", "message": ack["message"]}


def test_message_ack_without_client_msg_id_echoes_null(target, http, token, uid):
    _, _, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid(), role="agent")) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "no id"})
        ack = recv(ws)
        assert ack["type"] == "ack" and "clientMsgId" in ack and ack["clientMsgId"] is None


def test_customer_message_reaches_every_joined_socket_then_ai_reply(target, http, token, uid):
    u, tok, sid = _session(http, target, token, uid)
    with ws_open(target, tok) as mine, ws_open(target, token(sub=uid(), role="agent")) as agent:
        join(mine, sid)
        join(agent, sid)
        send(mine, {"type": "message", "sessionId": sid, "text": " ws hello ", "clientMsgId": "k1"})
        ack = recv(mine)
        assert ack["type"] == "ack" and ack["clientMsgId"] == "k1"
        msg = ack["message"]
        assert_message(msg, session_id=sid, sender="customer", sender_id=u, text=" ws hello ")
        assert recv(mine) == {"type": "message", "message": msg}
        reply_frame = recv(mine)
        assert reply_frame["type"] == "message" and set(reply_frame) == {"type", "message"}
        reply = reply_frame["message"]
        assert_message(
            reply, session_id=sid, sender="ai", sender_id=None, text="You said:  ws hello "
        )
        assert recv(agent) == {"type": "message", "message": msg}
        assert recv(agent) == {"type": "message", "message": reply}
        assert_silent(mine)
        assert_silent(agent)
    assert list_messages(http, target, tok, sid).json()["data"] == [msg, reply]


def test_message_on_human_session_gets_no_ai_reply(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid, human=True)
    with ws_open(target, tok) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "human please"})
        ack = recv(ws)
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        assert_silent(ws, 1.0)


def test_message_without_join_joins_implicitly(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid, human=True)
    with ws_open(target, tok) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "implicit"})
        ack = recv(ws)
        assert ack["type"] == "ack"
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        later = send_ok(http, target, token(sub=uid(), role="agent"), sid, "later")["message"]
        assert recv(ws) == {"type": "message", "message": later}


def test_message_on_someone_elses_session_is_forbidden_and_not_stored(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid())) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "intrude", "clientMsgId": 1})
        assert_error_frame(recv(ws), "forbidden")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}
    assert list_messages(http, target, tok, sid).json() == {"data": []}


def test_ai_failure_sends_upstream_error_after_customer_message_and_ping_is_answered_meanwhile(
    target, http, token, uid
):
    u, tok, sid = _session(http, target, token, uid)
    text = "slow then fail [fake:hang]"
    with ws_open(target, tok) as ws, ws_open(target, token(sub=uid(), role="agent")) as agent:
        join(agent, sid)
        send(ws, {"type": "message", "sessionId": sid, "text": text, "clientMsgId": "h"})
        ack = recv(ws)
        assert ack["type"] == "ack"
        assert_message(ack["message"], session_id=sid, sender="customer", sender_id=u, text=text)
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        assert recv(agent) == {"type": "message", "message": ack["message"]}
        send(ws, {"type": "ping"})
        assert recv(ws, timeout=2) == {"type": "pong"}
        assert_error_frame(recv(ws, timeout=15), "upstream_error")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}
        assert_silent(agent)
    assert list_messages(http, target, tok, sid).json()["data"] == [ack["message"]]


def test_slow_ai_reply_comes_later_and_ping_meanwhile_is_answered_first(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    text = "take your time [fake:delay=1000]"
    with ws_open(target, tok) as ws, ws_open(target, token(sub=uid(), role="agent")) as agent:
        join(agent, sid)
        send(ws, {"type": "message", "sessionId": sid, "text": text})
        ack = recv(ws)
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        send(ws, {"type": "ping"})
        assert recv(ws, timeout=0.8) == {"type": "pong"}
        reply = recv(ws)
        assert reply["type"] == "message"
        assert_message(
            reply["message"], session_id=sid, sender="ai", sender_id=None, text="You said: " + text
        )
        assert recv(agent) == {"type": "message", "message": ack["message"]}
        assert recv(agent) == reply


def test_ai_status_failure_sends_upstream_error_frame(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    with ws_open(target, tok) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": "boom [fake:status=500]"})
        ack = recv(ws)
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        assert_error_frame(recv(ws, timeout=10), "upstream_error")


# --------------------------------------------------------------------------- typing


def test_typing_reaches_every_other_joined_socket_only(target, http, token, uid):
    u, tok, sid = _session(http, target, token, uid)
    with (
        ws_open(target, tok) as mine,
        ws_open(target, token(sub=uid(), role="agent")) as a1,
        ws_open(target, token(sub=uid(), role="agent"), second=True) as a2,
    ):
        for ws in (mine, a1, a2):
            join(ws, sid)
        send(mine, {"type": "typing", "sessionId": sid})
        expected = {"type": "typing", "sessionId": sid, "from": "customer", "senderId": u}
        assert recv(a1) == expected
        assert recv(a2) == expected
        assert_silent(mine)


def test_typing_from_staff_says_agent(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    staff = uid()
    with ws_open(target, tok) as mine, ws_open(target, token(sub=staff, role="admin")) as adm:
        join(mine, sid)
        join(adm, sid)
        send(adm, {"type": "typing", "sessionId": sid})
        assert recv(mine) == {
            "type": "typing",
            "sessionId": sid,
            "from": "agent",
            "senderId": staff,
        }
        assert_silent(adm)


def test_typing_does_not_join_implicitly(target, http, token, uid):
    u, tok, sid = _session(http, target, token, uid, human=True)
    staff = token(sub=uid(), role="agent")
    with ws_open(target, tok) as typer, ws_open(target, staff) as listener:
        join(listener, sid)
        send(typer, {"type": "typing", "sessionId": sid})
        assert recv(listener) == {
            "type": "typing",
            "sessionId": sid,
            "from": "customer",
            "senderId": u,
        }
        send_ok(http, target, staff, sid, "not for the typer")
        assert recv(listener)["type"] == "message"
        assert_silent(typer)


def test_typing_on_someone_elses_session_is_forbidden(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    with ws_open(target, tok) as owner, ws_open(target, token(sub=uid())) as other:
        join(owner, sid)
        send(other, {"type": "typing", "sessionId": sid})
        assert_error_frame(recv(other), "forbidden")
        assert_silent(owner)


# --------------------------------------------------------------------------- handoff


def test_handoff_sets_agent_human_bumps_updated_at_and_reaches_every_joined_socket(
    target, http, token, uid
):
    u, tok, sid = _session(http, target, token, uid)
    before = read_session(target, sid)
    assert before["agent"] == "ai"
    r = target.stack.redis()
    r.expire(f"session:{sid}", 100)
    r.expire(f"user_sessions:{u}", 100)
    time.sleep(0.01)
    with ws_open(target, tok) as mine, ws_open(target, token(sub=uid(), role="agent")) as agent:
        join(mine, sid)
        join(agent, sid)
        send(mine, {"type": "handoff", "sessionId": sid})
        expected = {"type": "handoff", "sessionId": sid, "agent": "human"}
        assert recv(mine) == expected
        assert recv(agent) == expected
        after = read_session(target, sid)
        assert after["agent"] == "human"
        assert after["createdAt"] == before["createdAt"]
        assert after["updatedAt"] > before["updatedAt"]
        assert r.ttl(f"session:{sid}") > 86000
        assert r.ttl(f"user_sessions:{u}") > 86000
        # idempotent on a human session
        send(agent, {"type": "handoff", "sessionId": sid})
        assert recv(mine) == expected
        assert recv(agent) == expected
        assert read_session(target, sid)["agent"] == "human"
        # no AI reply any more
        send(mine, {"type": "message", "sessionId": sid, "text": "still there?"})
        ack = recv(mine)
        assert recv(mine) == {"type": "message", "message": ack["message"]}
        assert recv(agent) == {"type": "message", "message": ack["message"]}
        assert_silent(mine, 1.0)


def test_handoff_does_not_join_implicitly(target, http, token, uid):
    _, _, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid(), role="agent")) as ws:
        send(ws, {"type": "handoff", "sessionId": sid})
        assert_silent(ws, 0.5)
        assert read_session(target, sid)["agent"] == "human"


def test_handoff_of_someone_elses_session_is_forbidden(target, http, token, uid):
    _, _, sid = _session(http, target, token, uid)
    with ws_open(target, token(sub=uid())) as ws:
        send(ws, {"type": "handoff", "sessionId": sid})
        assert_error_frame(recv(ws), "forbidden")
    assert read_session(target, sid)["agent"] == "ai"


# --------------------------------------------------------------------------- error frames


@pytest.mark.parametrize(
    "raw",
    ["hello", "{", "[1, 2]", "42", "null", '"ping"', "true", ""],
    ids=["text", "broken", "array", "number", "null", "string", "bool", "empty"],
)
def test_frame_not_a_json_object_is_bad_request_and_socket_stays_open(target, token, raw):
    with ws_open(target, token()) as ws:
        ws.send(raw)
        assert_error_frame(recv(ws), "bad_request")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


_BAD_FRAMES = {
    "no-type": {"sessionId": "SID"},
    "unknown-type": {"type": "dance", "sessionId": "SID"},
    "numeric-type": {"type": 5},
    "null-type": {"type": None},
    "join-no-session": {"type": "join"},
    "join-empty-session": {"type": "join", "sessionId": ""},
    "join-numeric-session": {"type": "join", "sessionId": 7},
    "message-no-session": {"type": "message", "text": "hi"},
    "message-no-text": {"type": "message", "sessionId": "SID"},
    "message-blank-text": {"type": "message", "sessionId": "SID", "text": " \n\ufeff"},
    "message-numeric-text": {"type": "message", "sessionId": "SID", "text": 1},
    "message-text-4001": {"type": "message", "sessionId": "SID", "text": "x" * 4001},
    "message-emoji-2001": {"type": "message", "sessionId": "SID", "text": "\U0001f600" * 2001},
    "typing-no-session": {"type": "typing"},
    "handoff-no-session": {"type": "handoff"},
    "handoff-empty-session": {"type": "handoff", "sessionId": ""},
}


@pytest.mark.parametrize("name", list(_BAD_FRAMES))
def test_frame_with_missing_or_bad_field_is_bad_request(target, http, token, uid, name):
    _, tok, sid = _session(http, target, token, uid)
    frame = {k: (sid if v == "SID" else v) for k, v in _BAD_FRAMES[name].items()}
    with ws_open(target, tok) as ws:
        send(ws, frame)
        assert_error_frame(recv(ws), "bad_request")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}
    assert list_messages(http, target, tok, sid).json() == {"data": []}


def test_message_of_2000_emoji_is_accepted(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid, human=True)
    text = "\U0001f600" * 2000
    with ws_open(target, tok) as ws:
        send(ws, {"type": "message", "sessionId": sid, "text": text})
        ack = recv(ws)
        assert ack["type"] == "ack" and ack["message"]["text"] == text


@pytest.mark.parametrize("kind", ["join", "message", "typing", "handoff"])
def test_frame_for_missing_session_is_not_found(target, token, kind):
    frame = {"type": kind, "sessionId": str(uuid.uuid4()), "text": "hi"}
    with ws_open(target, token(role="agent")) as ws:
        send(ws, frame)
        assert_error_frame(recv(ws), "not_found")
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


# --------------------------------------------------------------------------- framing


def test_binary_frames_are_handled_as_utf8_text(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid, human=True)
    with ws_open(target, tok) as ws:
        ws.send(b'{"type": "ping"}')
        assert recv(ws) == {"type": "pong"}
        ws.send(json.dumps({"type": "join", "sessionId": sid}).encode())
        assert recv(ws) == {"type": "joined", "sessionId": sid}
        text = "caf\u00e9 \U0001f600"
        ws.send(
            json.dumps(
                {"type": "message", "sessionId": sid, "text": text}, ensure_ascii=False
            ).encode()
        )
        ack = recv(ws)
        assert ack["type"] == "ack" and ack["message"]["text"] == text
        assert recv(ws) == {"type": "message", "message": ack["message"]}
        ws.send(b"\x00\x01 not json")
        assert_error_frame(recv(ws), "bad_request")


def test_frame_of_exactly_64_kib_is_accepted(target, token):
    with ws_open(target, token()) as ws:
        head = '{"type": "ping", "pad": "'
        frame = head + "x" * (64 * 1024 - len(head) - 2) + '"}'
        assert len(frame.encode()) == 64 * 1024
        ws.send(frame)
        assert recv(ws) == {"type": "pong"}


def test_frame_over_64_kib_closes_1009(target, token):
    with ws_open(target, token()) as ws:
        head = '{"type": "ping", "pad": "'
        ws.send(head + "x" * (64 * 1024 - len(head) - 1) + '"}')
        _assert_closed(ws, 1009)


@pytest.mark.parametrize("path", ["/ws/", "/wss", "/api/ws", "/", "/ws/x"])
def test_upgrade_on_other_path_is_plain_404(target, token, path):
    with pytest.raises(InvalidStatus) as info:
        ws_open(target, token(), path=path)
    assert info.value.response.status_code == 404


# --------------------------------------------------------------------------- several instances


def test_sockets_on_two_instances_see_each_others_messages_typing_and_handoff(
    target, http, token, uid
):
    u, tok, sid = _session(http, target, token, uid)
    staff = uid()
    with (
        ws_open(target, tok) as cust,
        ws_open(target, token(sub=staff, role="agent"), second=True) as agent,
    ):
        join(cust, sid)
        join(agent, sid)
        send(cust, {"type": "message", "sessionId": sid, "text": "cross"})
        ack = recv(cust)
        assert recv(cust) == {"type": "message", "message": ack["message"]}
        reply = recv(cust)
        assert reply["message"]["from"] == "ai"
        assert recv(agent) == {"type": "message", "message": ack["message"]}
        assert recv(agent) == reply

        send(agent, {"type": "typing", "sessionId": sid})
        assert recv(cust) == {
            "type": "typing",
            "sessionId": sid,
            "from": "agent",
            "senderId": staff,
        }
        send(cust, {"type": "typing", "sessionId": sid})
        assert recv(agent) == {
            "type": "typing",
            "sessionId": sid,
            "from": "customer",
            "senderId": u,
        }

        send(agent, {"type": "message", "sessionId": sid, "text": "from core2"})
        ack2 = recv(agent)
        assert_message(
            ack2["message"], session_id=sid, sender="agent", sender_id=staff, text="from core2"
        )
        assert recv(agent) == {"type": "message", "message": ack2["message"]}
        assert recv(cust) == {"type": "message", "message": ack2["message"]}

        send(agent, {"type": "handoff", "sessionId": sid})
        expected = {"type": "handoff", "sessionId": sid, "agent": "human"}
        assert recv(agent) == expected
        assert recv(cust) == expected
        assert_silent(cust)
        assert_silent(agent)


@pytest.mark.parametrize("second", [False, True], ids=["core", "core2"])
def test_socket_that_received_joined_gets_every_frame_published_afterwards(
    target, http, token, uid, second
):
    r = target.stack.redis()
    for _ in range(5):
        _, tok, sid = _session(http, target, token, uid)
        with ws_open(target, tok, second=second) as ws:
            join(ws, sid)
            frame = {"type": "typing", "sessionId": sid, "from": "agent", "senderId": "peer"}
            r.publish(_channel(sid), json.dumps({"frame": frame, "exclude": None}))
            assert recv(ws) == frame


def test_contract_shaped_publication_from_a_peer_reaches_joined_sockets(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    msg = {
        "messageId": str(uuid.uuid4()),
        "sessionId": sid,
        "from": "agent",
        "senderId": "peer-agent",
        "text": "from another implementation",
        "createdAt": "2024-01-01T10:00:00.000Z",
    }
    frame = {"type": "message", "message": msg}
    r = target.stack.redis()
    with (
        ws_open(target, tok) as a,
        ws_open(target, token(sub=uid(), role="agent"), second=True) as b,
    ):
        join(a, sid)
        join(b, sid)
        r.publish(_channel(sid), json.dumps({"frame": frame, "exclude": None}))
        assert recv(a) == frame
        assert recv(b) == frame
        r.publish(_channel(sid), json.dumps({"frame": frame, "exclude": str(uuid.uuid4())}))
        assert recv(a) == frame
        assert recv(b) == frame


def test_garbage_publications_are_ignored(target, http, token, uid):
    _, tok, sid = _session(http, target, token, uid)
    r = target.stack.redis()
    good = {"type": "handoff", "sessionId": sid, "agent": "human"}
    with (
        ws_open(target, tok) as ws,
        ws_open(target, token(sub=uid(), role="agent"), second=True) as ws2,
    ):
        join(ws, sid)
        join(ws2, sid)
        for junk in [
            b"not json",
            b"\xff\xfe\x00",
            b"[]",
            b"42",
            b"null",
            b'"frame"',
            b"{}",
            b'{"exclude": null}',
            b'{"frame": {"type": "pong"}, "exclude": 5}',
        ]:
            r.publish(_channel(sid), junk)
        r.publish(_channel(sid), json.dumps({"frame": good, "exclude": None}))
        assert recv(ws) == good
        assert recv(ws2) == good
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_chat_core_publishes_the_contract_shape(target, http, token, uid):
    u, tok, sid = _session(http, target, token, uid, human=True)
    pubsub = _subscribe(target, sid)
    try:
        with ws_open(target, tok) as ws:
            join(ws, sid)
            send(ws, {"type": "message", "sessionId": sid, "text": "published"})
            ack = recv(ws)
            pub = _next_publication(pubsub)
            assert pub == {"frame": {"type": "message", "message": ack["message"]}, "exclude": None}
            assert recv(ws) == {"type": "message", "message": ack["message"]}

            send(ws, {"type": "typing", "sessionId": sid})
            pub = _next_publication(pubsub)
            assert set(pub) == {"frame", "exclude"}
            assert pub["frame"] == {
                "type": "typing",
                "sessionId": sid,
                "from": "customer",
                "senderId": u,
            }
            assert isinstance(pub["exclude"], str) and re.match(UUID4, pub["exclude"])
            socket_id = pub["exclude"]

            # A peer's frame that excludes this socket does not reach it, others still do.
            with ws_open(target, token(sub=uid(), role="agent")) as other:
                join(other, sid)
                frame = {"type": "typing", "sessionId": sid, "from": "agent", "senderId": "x"}
                target.stack.redis().publish(
                    _channel(sid), json.dumps({"frame": frame, "exclude": socket_id})
                )
                assert recv(other) == frame
                assert _next_publication(pubsub)["exclude"] == socket_id
                assert_silent(ws)

            body = send_ok(http, target, tok, sid, "via http")
            pub = _next_publication(pubsub)
            assert pub == {
                "frame": {"type": "message", "message": body["message"]},
                "exclude": None,
            }
    finally:
        pubsub.close()
