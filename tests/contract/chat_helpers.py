"""Helpers for the chat-core and chat-admin contract tests (§4, §5, §6 of legacy-api.md).

Import as ``from chat_helpers import …``. Everything here speaks the wire (HTTP,
WebSocket, Redis pub/sub) or reads the shared storage through ``target.stack``; nothing
imports service code.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
from contract_helpers import JS_ISO, UUID4, auth
from tests_support import RECV_TIMEOUT, recv, send  # noqa: F401 - re-exported
from websockets.sync.client import ClientConnection, connect

MESSAGE_KEYS = {"messageId", "sessionId", "from", "senderId", "text", "createdAt"}
CONVERSATION_KEYS = {
    "id",
    "sessionId",
    "contactId",
    "status",
    "assigneeId",
    "teamId",
    "labels",
    "createdAt",
    "updatedAt",
}


def sfx() -> str:
    """A short unique suffix for names that must not collide across tests."""
    return uuid.uuid4().hex[:10]


# --------------------------------------------------------------------------- sessions


def create_session(http: httpx.Client, target: Any, tok: str, user_id: str) -> str:
    """A new session of ``user_id`` through chat-session (agent ``ai``); its id."""
    r = http.post(f"{target.session}/api/sessions", json={"userId": user_id}, headers=auth(tok))
    assert r.status_code == 201, r.text
    return str(r.json()["sessionId"])


def make_human(http: httpx.Client, target: Any, tok: str, session_id: str) -> None:
    r = http.patch(
        f"{target.session}/api/sessions/{session_id}", json={"agent": "human"}, headers=auth(tok)
    )
    assert r.status_code == 200, r.text


def read_session(target: Any, session_id: str) -> dict[str, Any]:
    raw = target.stack.redis().get(f"session:{session_id}")
    assert raw is not None, session_id
    return dict(json.loads(raw))


# --------------------------------------------------------------------------- messages


def post_message(
    http: httpx.Client, target: Any, tok: str, session_id: str, text: str
) -> httpx.Response:
    return http.post(
        f"{target.core}/api/messages",
        json={"sessionId": session_id, "text": text},
        headers=auth(tok),
    )


def send_ok(http: httpx.Client, target: Any, tok: str, session_id: str, text: str) -> dict:
    """Post a message that must succeed; the ``201`` body."""
    r = post_message(http, target, tok, session_id, text)
    assert r.status_code == 201, r.text
    return dict(r.json())


def assert_message(
    m: Any, *, session_id: str, sender: str, sender_id: str | None, text: str
) -> None:
    """The §4 message object, exactly."""
    assert isinstance(m, dict) and set(m) == MESSAGE_KEYS, m
    assert re.match(UUID4, m["messageId"]), m
    assert re.match(JS_ISO, m["createdAt"]), m
    assert m["sessionId"] == session_id
    assert m["from"] == sender
    assert m["senderId"] == sender_id
    assert m["text"] == text


def list_messages(
    http: httpx.Client, target: Any, tok: str, session_id: str, **params: Any
) -> httpx.Response:
    return http.get(
        f"{target.core}/api/sessions/{session_id}/messages", params=params, headers=auth(tok)
    )


def conversation_row(target: Any, session_id: str) -> dict[str, Any] | None:
    conn = target.stack.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, session_id, contact_id, status, assignee_id, team_id,"
                " created_at, updated_at FROM conversations WHERE session_id = %s",
                (session_id,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    keys = [
        "id",
        "session_id",
        "contact_id",
        "status",
        "assignee_id",
        "team_id",
        "created_at",
        "updated_at",
    ]
    return dict(zip(keys, row, strict=True))


def sql(target: Any, query: str, args: tuple = ()) -> list[tuple]:
    conn = target.stack.mysql()
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def iso_ms(dt: Any) -> str:
    """A naive UTC ``datetime`` from MySQL in the JavaScript ISO form."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def tick() -> None:
    """Let the millisecond clock move, so that "set to now" is observable."""
    time.sleep(0.015)


# --------------------------------------------------------------------------- websocket


def ws_open(
    target: Any,
    tok: str | None,
    *,
    second: bool = False,
    headers: dict[str, str] | None = None,
    path: str = "/ws",
) -> ClientConnection:
    return connect(
        target.ws_url(second=second, token=tok, path=path),
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=5,
        close_timeout=2,
        max_size=None,
    )


def assert_silent(ws: ClientConnection, within: float = 0.3) -> None:
    """No frame arrives on ``ws`` within ``within`` seconds."""
    try:
        raw = ws.recv(timeout=within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {raw!r}")


def join(ws: ClientConnection, session_id: str) -> None:
    send(ws, {"type": "join", "sessionId": session_id})
    assert recv(ws) == {"type": "joined", "sessionId": session_id}


def assert_error_frame(frame: Any, code: str) -> None:
    assert isinstance(frame, dict) and set(frame) == {"type", "code", "message"}, frame
    assert frame["type"] == "error" and frame["code"] == code, frame
    assert isinstance(frame["message"], str)


# --------------------------------------------------------------------------- chat-admin


def admin_url(target: Any, path: str) -> str:
    return f"{target.admin}/api/admin/{path.lstrip('/')}"


def mint(target: Any, sub: str, role: str = "customer") -> str:
    """A token for module-scoped fixtures (the ``token`` fixture is per test)."""
    import warnings

    import jwt

    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 3600}
    with warnings.catch_warnings():
        # The test stack's secret is shorter than PyJWT's recommended 32 bytes.
        warnings.simplefilter("ignore")
        return str(jwt.encode(claims, target.stack.jwt_secret, algorithm="HS256"))


USER_KEYS = {"id", "email", "name", "role", "teamId", "createdAt", "updatedAt"}
TEAM_KEYS = {"id", "name", "description", "createdAt", "updatedAt"}
LABEL_KEYS = {"id", "title", "color", "createdAt", "updatedAt"}
CONTACT_KEYS = {"id", "name", "email", "phone", "externalId", "createdAt", "updatedAt"}
KEYS = {"users": USER_KEYS, "teams": TEAM_KEYS, "labels": LABEL_KEYS, "contacts": CONTACT_KEYS}


def create(http: httpx.Client, target: Any, headers: dict, kind: str, body: dict) -> dict:
    """``POST /api/admin/{kind}`` that must succeed (201); the created resource."""
    r = http.post(admin_url(target, kind), json=body, headers=headers)
    assert r.status_code == 201, r.text
    out = dict(r.json())
    assert set(out) == KEYS[kind], out
    assert isinstance(out["id"], int) and out["id"] >= 1
    assert re.match(JS_ISO, out["createdAt"]) and re.match(JS_ISO, out["updatedAt"])
    return out


def new_team(http: httpx.Client, target: Any, headers: dict, **kw: Any) -> dict:
    return create(http, target, headers, "teams", {"name": f"team-{sfx()}", **kw})


def new_user(http: httpx.Client, target: Any, headers: dict, **kw: Any) -> dict:
    s = sfx()
    return create(
        http, target, headers, "users", {"email": f"{s}@example.com", "name": f"User {s}", **kw}
    )


def new_label(http: httpx.Client, target: Any, headers: dict, **kw: Any) -> dict:
    return create(http, target, headers, "labels", {"title": f"l-{sfx()}", **kw})


def new_contact(http: httpx.Client, target: Any, headers: dict, **kw: Any) -> dict:
    return create(http, target, headers, "contacts", {"name": f"Contact {sfx()}", **kw})


def new_conversation(http: httpx.Client, target: Any, staff_tok: str) -> tuple[str, int]:
    """A conversation made the contract's way: a first message through chat-core.

    The session belongs to a fresh customer id; ``staff_tok`` (agent or admin) creates it
    and sends the message, so no AI call is made. Returns (sessionId, conversation id).
    """
    from contract_helpers import new_uid

    customer = new_uid()
    sid = create_session(http, target, staff_tok, customer)
    send_ok(http, target, staff_tok, sid, f"hello from {customer}")
    row = conversation_row(target, sid)
    assert row is not None
    return sid, int(row["id"])


def get_conversation(http: httpx.Client, target: Any, headers: dict, conv_id: int) -> dict:
    r = http.get(admin_url(target, f"conversations/{conv_id}"), headers=headers)
    assert r.status_code == 200, r.text
    out = dict(r.json())
    assert set(out) == CONVERSATION_KEYS, out
    return out
