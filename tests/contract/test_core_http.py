"""chat-core over HTTP: ``POST /api/messages`` and the message list (legacy-api.md §4, §6).

Storage assertions read the shared MariaDB database (``messages``, ``conversations``,
``customer_contacts`` of schema.sql) through ``target.stack``.
"""

from __future__ import annotations

import re
import uuid

import pytest
from chat_helpers import (
    assert_message,
    conversation_row,
    create_session,
    iso_ms,
    join,
    list_messages,
    make_human,
    mint,
    post_message,
    recv,
    send_ok,
    sql,
    tick,
    ws_open,
)
from contract_helpers import JSON_CT, UUID4, assert_error, auth, new_uid

# --------------------------------------------------------------------------- POST /api/messages


def test_customer_message_on_ai_session_returns_ai_reply(target, http, token, uid):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    r = post_message(http, target, tok, sid, "hello there")
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == JSON_CT
    body = r.json()
    assert set(body) == {"message", "reply"}
    assert_message(
        body["message"], session_id=sid, sender="customer", sender_id=u, text="hello there"
    )
    assert_message(
        body["reply"], session_id=sid, sender="ai", sender_id=None, text="You said: hello there"
    )
    assert body["reply"]["messageId"] != body["message"]["messageId"]
    assert body["reply"]["createdAt"] >= body["message"]["createdAt"]


def test_text_with_surrounding_whitespace_is_stored_sent_and_returned_exactly(
    target, http, token, uid
):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    text = "  \tpadded \u00e9\U0001f600 \n"
    body = send_ok(http, target, tok, sid, text)
    assert body["message"]["text"] == text
    assert body["reply"]["text"] == "You said: " + text
    listed = list_messages(http, target, tok, sid).json()["data"]
    assert [m["text"] for m in listed] == [text, "You said: " + text]
    rows = sql(
        target,
        "SELECT content FROM messages WHERE message_uid = %s",
        (body["message"]["messageId"],),
    )
    assert rows == [(text,)]


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_agent_or_admin_sender_on_ai_session_sends_as_agent_without_reply(
    target, http, token, uid, role
):
    u = uid()
    sid = create_session(http, target, token(sub=u), u)
    staff = uid()
    body = send_ok(http, target, token(sub=staff, role=role), sid, "staff here")
    assert_message(
        body["message"], session_id=sid, sender="agent", sender_id=staff, text="staff here"
    )
    assert body["reply"] is None


def test_customer_message_on_human_session_gets_null_reply(target, http, token, uid):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    make_human(http, target, tok, sid)
    body = send_ok(http, target, tok, sid, "need a person")
    assert_message(
        body["message"], session_id=sid, sender="customer", sender_id=u, text="need a person"
    )
    assert body["reply"] is None
    assert len(list_messages(http, target, tok, sid).json()["data"]) == 1


@pytest.mark.parametrize(
    "text",
    ["a" * 4000, "\U0001f600" * 2000, "  " + "b" * 4000 + "\n ", "\ufeff" + "c" * 4000 + "\ufeff"],
    ids=["ascii-4000", "emoji-2000", "padded-4000", "bom-padded-4000"],
)
def test_text_of_4000_utf16_units_after_trim_is_accepted(target, http, token, uid, text):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    make_human(http, target, tok, sid)
    body = send_ok(http, target, tok, sid, text)
    assert body["message"]["text"] == text


_BAD_BODIES = {
    "empty-object": {},
    "no-session": {"text": "hi"},
    "empty-session": {"sessionId": "", "text": "hi"},
    "numeric-session": {"sessionId": 5, "text": "hi"},
    "null-session": {"sessionId": None, "text": "hi"},
    "no-text": {"sessionId": "SID"},
    "null-text": {"sessionId": "SID", "text": None},
    "empty-text": {"sessionId": "SID", "text": ""},
    "blank-text": {"sessionId": "SID", "text": " \t\n "},
    "bom-nbsp-text": {"sessionId": "SID", "text": "\ufeff\u00a0\u2028"},
    "numeric-text": {"sessionId": "SID", "text": 42},
    "list-text": {"sessionId": "SID", "text": ["hi"]},
    "text-4001": {"sessionId": "SID", "text": "a" * 4001},
    "emoji-2001": {"sessionId": "SID", "text": "\U0001f600" * 2001},
}


@pytest.mark.parametrize("name", list(_BAD_BODIES))
def test_invalid_message_body_is_400(target, http, token, uid, name):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    body = {k: (sid if v == "SID" else v) for k, v in _BAD_BODIES[name].items()}
    r = http.post(f"{target.core}/api/messages", json=body, headers=auth(tok))
    assert_error(r, 400, "bad_request")
    assert conversation_row(target, sid) is None


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"text"', "null", "{"])
def test_message_body_not_a_json_object_is_400(target, http, token, raw):
    r = http.post(
        f"{target.core}/api/messages",
        content=raw.encode(),
        headers={**auth(token()), "Content-Type": "application/json"},
    )
    assert_error(r, 400, "bad_request")


def test_message_for_missing_session_is_404(target, http, token):
    r = post_message(http, target, token(), str(uuid.uuid4()), "anyone?")
    assert_error(r, 404, "not_found")


def test_invalid_text_for_missing_session_is_400_before_404(target, http, token):
    r = post_message(http, target, token(), str(uuid.uuid4()), "   ")
    assert_error(r, 400, "bad_request")


def test_message_on_someone_elses_session_is_403(target, http, token, uid):
    owner = uid()
    sid = create_session(http, target, token(sub=owner), owner)
    r = post_message(http, target, token(sub=uid()), sid, "let me in")
    assert_error(r, 403, "forbidden")
    assert conversation_row(target, sid) is None


def test_invalid_text_on_someone_elses_session_is_400_before_403(target, http, token, uid):
    owner = uid()
    sid = create_session(http, target, token(sub=owner), owner)
    r = post_message(http, target, token(sub=uid()), sid, "")
    assert_error(r, 400, "bad_request")


def test_message_without_token_is_401(target, http, token, uid):
    owner = uid()
    sid = create_session(http, target, token(sub=owner), owner)
    r = http.post(f"{target.core}/api/messages", json={"sessionId": sid, "text": "hi"})
    assert_error(r, 401, "unauthorized")


def test_ai_failure_is_502_and_customer_message_stays_stored_and_delivered(
    target, http, token, uid
):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    text = "please fail [fake:status=500]"
    with ws_open(target, token(sub=uid(), role="agent")) as ws:
        join(ws, sid)
        r = post_message(http, target, tok, sid, text)
        assert_error(r, 502, "upstream_error")
        frame = recv(ws)
    assert frame["type"] == "message" and set(frame) == {"type", "message"}
    assert_message(frame["message"], session_id=sid, sender="customer", sender_id=u, text=text)
    listed = list_messages(http, target, tok, sid).json()["data"]
    assert listed == [frame["message"]]


def test_http_message_and_ai_reply_are_delivered_to_joined_sockets(target, http, token, uid):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    with ws_open(target, tok) as ws:
        join(ws, sid)
        body = send_ok(http, target, tok, sid, "over http")
        assert recv(ws) == {"type": "message", "message": body["message"]}
        assert recv(ws) == {"type": "message", "message": body["reply"]}


# --------------------------------------------------------------------------- MySQL storage


def _message_row(target, message_id):
    rows = sql(
        target,
        "SELECT m.message_uid, m.sender_type, m.sender_id, m.content, m.created_at,"
        " c.session_id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.message_uid = %s",
        (message_id,),
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_first_message_creates_conversation_contact_and_message_rows(target, http, token, uid):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    assert conversation_row(target, sid) is None
    body = send_ok(http, target, tok, sid, "first")
    msg, reply = body["message"], body["reply"]

    uid_, stype, sender, content, created, session = _message_row(target, msg["messageId"])
    assert (uid_, stype, sender, content, session) == (
        msg["messageId"],
        "customer",
        u,
        "first",
        sid,
    )
    assert iso_ms(created) == msg["createdAt"]
    uid_, stype, sender, content, created, session = _message_row(target, reply["messageId"])
    assert (stype, sender, content, session) == ("ai", None, "You said: first", sid)
    assert iso_ms(created) == reply["createdAt"]

    conv = conversation_row(target, sid)
    assert conv is not None
    assert (conv["status"], conv["assignee_id"], conv["team_id"]) == ("open", None, None)
    contacts = sql(
        target,
        "SELECT id, name, email, phone, external_id FROM customer_contacts WHERE external_id = %s",
        (u,),
    )
    assert contacts == [(conv["contact_id"], u, None, None, u)]


def test_agent_message_row_has_agent_sender(target, http, token, uid):
    u, staff = uid(), uid()
    sid = create_session(http, target, token(sub=u), u)
    body = send_ok(http, target, token(sub=staff, role="admin"), sid, "from staff")
    _, stype, sender, content, created, _ = _message_row(target, body["message"]["messageId"])
    assert (stype, sender, content) == ("agent", staff, "from staff")
    assert iso_ms(created) == body["message"]["createdAt"]


def test_first_message_reuses_contact_with_same_external_id(target, http, token, uid):
    u = uid()
    admin = token(sub=uid(), role="admin")
    r = http.post(
        f"{target.admin}/api/admin/contacts",
        json={"name": "Known Customer", "email": "known@example.com", "externalId": u},
        headers=auth(admin),
    )
    assert r.status_code == 201, r.text
    contact_id = r.json()["id"]
    tok = token(sub=u)
    sid1 = create_session(http, target, tok, u)
    sid2 = create_session(http, target, tok, u)
    send_ok(http, target, tok, sid1, "one")
    send_ok(http, target, tok, sid2, "two")
    c1, c2 = conversation_row(target, sid1), conversation_row(target, sid2)
    assert c1["contact_id"] == c2["contact_id"] == contact_id
    assert c1["id"] != c2["id"]
    rows = sql(target, "SELECT name, email FROM customer_contacts WHERE external_id = %s", (u,))
    assert rows == [("Known Customer", "known@example.com")]


def test_new_message_bumps_conversation_updated_at(target, http, token, uid):
    u, staff = uid(), uid()
    sid = create_session(http, target, token(sub=u), u)
    agent = token(sub=staff, role="agent")
    send_ok(http, target, agent, sid, "one")
    before = conversation_row(target, sid)
    tick()
    body = send_ok(http, target, agent, sid, "two")
    after = conversation_row(target, sid)
    assert after["id"] == before["id"]
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    assert iso_ms(after["updated_at"]) >= body["message"]["createdAt"]
    count = sql(target, "SELECT COUNT(*) FROM messages WHERE conversation_id = %s", (after["id"],))
    assert count == [(2,)]


# --------------------------------------------------------------------------- message list


@pytest.fixture(scope="module")
def long_session(target, http):
    """A session of one customer with 55 agent messages ``m00`` … ``m54`` (no AI)."""
    owner = new_uid()
    owner_tok = mint(target, owner)
    sid = create_session(http, target, owner_tok, owner)
    agent_tok = mint(target, new_uid(), "agent")
    sent = [send_ok(http, target, agent_tok, sid, f"m{i:02d}")["message"] for i in range(55)]
    return {"sid": sid, "owner": owner, "tok": owner_tok, "sent": sent}


def test_message_list_default_is_last_50_oldest_first(target, http, long_session):
    r = list_messages(http, target, long_session["tok"], long_session["sid"])
    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_CT
    assert r.json() == {"data": long_session["sent"][5:]}


@pytest.mark.parametrize("limit", [1, 7, 55, 200])
def test_message_list_limit_takes_the_newest(target, http, long_session, limit):
    r = list_messages(http, target, long_session["tok"], long_session["sid"], limit=limit)
    assert r.status_code == 200
    assert r.json()["data"] == long_session["sent"][-limit:]


def test_message_list_before_is_exclusive(target, http, long_session):
    sent = long_session["sent"]
    r = list_messages(
        http,
        target,
        long_session["tok"],
        long_session["sid"],
        before=sent[10]["messageId"],
        limit=3,
    )
    assert r.status_code == 200
    assert r.json()["data"] == sent[7:10]
    r = list_messages(
        http, target, long_session["tok"], long_session["sid"], before=sent[2]["messageId"]
    )
    assert r.json()["data"] == sent[:2]
    r = list_messages(
        http, target, long_session["tok"], long_session["sid"], before=sent[0]["messageId"]
    )
    assert r.json() == {"data": []}


@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "1.5", "", "1e2"])
def test_message_list_bad_limit_is_400(target, http, long_session, limit):
    r = list_messages(http, target, long_session["tok"], long_session["sid"], limit=limit)
    assert_error(r, 400, "bad_request")


def test_message_list_before_unknown_message_is_400(target, http, long_session):
    r = list_messages(
        http, target, long_session["tok"], long_session["sid"], before=str(uuid.uuid4())
    )
    assert_error(r, 400, "bad_request")
    r = list_messages(http, target, long_session["tok"], long_session["sid"], before="abc")
    assert_error(r, 400, "bad_request")


def test_message_list_before_message_of_another_session_is_400(
    target, http, token, uid, long_session
):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    make_human(http, target, tok, sid)
    other = send_ok(http, target, tok, sid, "elsewhere")["message"]
    r = list_messages(
        http, target, long_session["tok"], long_session["sid"], before=other["messageId"]
    )
    assert_error(r, 400, "bad_request")


def test_message_list_of_someone_elses_session_is_403(target, http, token, long_session):
    r = list_messages(http, target, token(), long_session["sid"])
    assert_error(r, 403, "forbidden")


@pytest.mark.parametrize("role", ["agent", "admin"])
def test_message_list_is_open_to_staff(target, http, token, uid, long_session, role):
    r = list_messages(http, target, token(sub=uid(), role=role), long_session["sid"], limit=2)
    assert r.status_code == 200
    assert r.json()["data"] == long_session["sent"][-2:]


def test_message_list_of_session_without_messages_is_empty(target, http, token, uid):
    u = uid()
    tok = token(sub=u)
    sid = create_session(http, target, tok, u)
    r = list_messages(http, target, tok, sid)
    assert r.status_code == 200
    assert r.json() == {"data": []}


def test_message_list_of_missing_session_is_404(target, http, token):
    r = list_messages(http, target, token(role="agent"), str(uuid.uuid4()))
    assert_error(r, 404, "not_found")


def test_message_list_without_token_is_401(target, http, long_session):
    r = http.get(f"{target.core}/api/sessions/{long_session['sid']}/messages")
    assert_error(r, 401, "unauthorized")


def test_message_ids_are_uuid4_and_unique(long_session):
    ids = [m["messageId"] for m in long_session["sent"]]
    assert all(re.match(UUID4, i) for i in ids)
    assert len(set(ids)) == len(ids)
