"""The ``/ws`` endpoint: handshake, auth, frames, and one writer per socket.

Frames of legacy-api.md §4 and §6 "chat-core" (``ping``, ``join``, ``message``,
``typing``, ``handoff``), handled one at a time per socket in arrival order, except the AI
half of a ``message``, which runs detached so that a ``ping`` sent meanwhile is answered
at once. Errors answer ``{"type": "error", "code", "message"}`` to the sender and never
close the socket.

Handshake: any path but exactly ``/ws`` gets a plain HTTP 404 with the JSON error body
(ASGI WebSocket Denial Response); a bad or missing token is accepted, then closed with
4401 ``unauthorized``. A non-empty ``?token=`` wins over ``Authorization: Bearer …``.

Frames over 64 KiB (65 537 bytes and more) close the socket with 1009, as ``ws``'s
``maxPayload`` does; binary frames are decoded as UTF-8 with U+FFFD replacement.

Slow consumers: every socket has a bounded send queue (``WS_SEND_QUEUE`` frames, default
256) drained by its own writer task, so the hub never waits for a socket. When a socket's
queue is full it is dropped: it leaves every session, its pending frames are discarded and
it is closed with **1013** (Try Again Later, RFC 6455 §7.4.1 / IANA registry: the server
is overloaded by this client's backlog; the client may reconnect and reload history with
``GET /api/sessions/{id}/messages``) and reason ``slow consumer``. If even the close frame
cannot be written within a second, the connection is simply closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from modules.common.auth import InvalidToken, User, verify_token
from modules.common.errors import ApiError, bad_request
from modules.common.jsfmt import JSONError, js_dumps, js_loads
from modules.websocket.core import ChatCore, require_session_id, require_text, sender_kind

__all__ = ["MAX_FRAME_BYTES", "SLOW_CONSUMER_CLOSE", "Connection", "serve_websocket"]

log = logging.getLogger("modules.websocket")

MAX_FRAME_BYTES = 64 * 1024
SLOW_CONSUMER_CLOSE = 1013
_NOT_FOUND_BODY = js_dumps({"error": {"code": "not_found", "message": "not found"}})


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Connection:
    """One accepted socket: identity, joined sessions, bounded outbox and its writer."""

    def __init__(self, user: User, token: str, send: Send, queue_max: int) -> None:
        self.id = str(uuid.uuid4())
        self.user = user
        self.authorization = f"Bearer {token}"
        self.joined: set[str] = set()
        self.closed = False
        self.dropped = asyncio.Event()
        self._send = send
        self._max = queue_max
        # Unbounded type, bounded by deliver(): a close item always fits.
        self._outbox: asyncio.Queue[str | _Close] = asyncio.Queue()

    def deliver(self, text: str) -> None:
        """Queue a text frame; never waits. A full queue drops the socket."""
        if self.closed or self.dropped.is_set():
            return
        if self._outbox.qsize() >= self._max:
            log.warning("dropping slow WebSocket %s (%d frames queued)", self.id, self._max)
            self.dropped.set()
            return
        self._outbox.put_nowait(text)

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.deliver(js_dumps(frame).decode())

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued."""
        if not self.closed:
            self.closed = True
            self._outbox.put_nowait(_Close(code, reason))

    async def run_writer(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Close):
                    await self._send(
                        {"type": "websocket.close", "code": item.code, "reason": item.reason}
                    )
                    return
                await self._send({"type": "websocket.send", "text": item})
        except (OSError, RuntimeError):
            return  # the client went away (uvicorn's ClientDisconnected is an OSError)


def _query_token(scope: Scope) -> str | None:
    raw = scope.get("query_string", b"").decode("latin-1")
    for k, v in parse_qsl(raw, keep_blank_values=True, encoding="utf-8"):
        if k == "token":
            return v
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v).decode("latin-1").strip(" \t")
    return None


def token_of(scope: Scope) -> str | None:
    """``?token=`` when non-empty, else ``Authorization: Bearer <token>``."""
    token = _query_token(scope)
    if token:
        return token
    header = _header(scope, b"authorization")
    if header is not None and header.startswith("Bearer "):
        return header[len("Bearer ") :]
    return None


async def _deny_404(scope: Scope, send: Send) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json; charset=utf-8"),
                    (b"content-length", str(len(_NOT_FOUND_BODY)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": _NOT_FOUND_BODY, "more_body": False}
        )
    else:
        await send({"type": "websocket.close", "code": 1008})  # servers answer 403


async def serve_websocket(core: ChatCore, scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI WebSocket handler of the module."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
    if path != "/ws":
        await _deny_404(scope, send)
        return
    token = token_of(scope)
    user: User | None = None
    secret = core.settings.jwt_secret_key
    if token and secret:
        try:
            user = verify_token(token, secret)
        except InvalidToken:
            user = None
    await send({"type": "websocket.accept"})
    if user is None or token is None:
        await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
        return
    conn = Connection(user, token, send, core.options.send_queue)
    writer = asyncio.get_running_loop().create_task(conn.run_writer())
    reader = asyncio.get_running_loop().create_task(_read_frames(core, conn, receive))
    dropped = asyncio.get_running_loop().create_task(conn.dropped.wait())
    core.sockets.add(conn)
    try:
        await asyncio.wait({reader, dropped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        core.sockets.discard(conn)
        core.hub.leave_all(conn)
        if conn.dropped.is_set():
            conn.closed = True
            reader.cancel()
            writer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    send(
                        {
                            "type": "websocket.close",
                            "code": SLOW_CONSUMER_CLOSE,
                            "reason": "slow consumer",
                        }
                    ),
                    1.0,
                )
        else:
            dropped.cancel()
            reader.cancel()
            if conn.closed:  # we close (1009, 1001): let the writer flush the close
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), 2.0)
            conn.closed = True
            writer.cancel()
        await asyncio.gather(reader, writer, dropped, return_exceptions=True)


async def _read_frames(core: ChatCore, conn: Connection, receive: Receive) -> None:
    while not conn.closed:
        msg = await receive()
        kind = msg["type"]
        if kind == "websocket.disconnect":
            conn.closed = True
            return
        if kind != "websocket.receive":
            continue
        text = msg.get("text")
        if text is None:
            data = msg.get("bytes") or b""
            size = len(data)
            text = data.decode("utf-8", "replace")
        else:
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_FRAME_BYTES:
            conn.close(1009)
            return
        try:
            await _handle(core, conn, text)
        except ApiError as exc:
            conn.send_frame({"type": "error", "code": exc.code, "message": exc.message})
        except Exception:
            log.exception("chat-core ws error")
            conn.send_frame({"type": "error", "code": "internal", "message": "internal error"})


async def _handle(core: ChatCore, conn: Connection, text: str) -> None:
    try:
        frame = js_loads(text)
    except JSONError:
        raise bad_request("frame is not JSON") from None
    if not isinstance(frame, dict):
        raise bad_request("frame is not an object")
    kind = frame.get("type")
    if kind == "ping":
        conn.send_frame({"type": "pong"})
    elif kind == "join":
        session_id = require_session_id(frame)
        await core.load_session(conn.user, session_id)
        await core.hub.join(conn, session_id)
        conn.send_frame({"type": "joined", "sessionId": session_id})
    elif kind == "message":
        await _message(core, conn, frame)
    elif kind == "typing":
        session_id = require_session_id(frame)
        await core.load_session(conn.user, session_id)
        typing = {
            "type": "typing",
            "sessionId": session_id,
            "from": sender_kind(conn.user),
            "senderId": conn.user.sub,
        }
        await core.hub.publish(session_id, typing, conn.id)
    elif kind == "handoff":
        session_id = require_session_id(frame)
        await core.handoff(await core.load_session(conn.user, session_id))
    else:
        raise bad_request("unknown frame type")


async def _message(core: ChatCore, conn: Connection, frame: dict[str, Any]) -> None:
    session_id = require_session_id(frame)
    text = require_text(frame)
    client_msg_id = frame.get("clientMsgId")  # absent -> null; else echoed as sent
    session = await core.load_session(conn.user, session_id)
    if session_id not in conn.joined:
        await core.hub.join(conn, session_id)  # implicit join, no `joined` frame
    message = await core.store_from(conn.user, session, text)
    conn.send_frame({"type": "ack", "clientMsgId": client_msg_id, "message": message})
    await core.hub.publish(session_id, {"type": "message", "message": message}, None)
    if core.routes_to_ai(conn.user, session):

        async def ai_part() -> None:
            try:
                await core.ai_reply(conn.authorization, session, text)
            except ApiError as exc:
                conn.send_frame({"type": "error", "code": exc.code, "message": exc.message})
            except Exception:
                log.exception("chat-core AI reply failed")
                conn.send_frame({"type": "error", "code": "internal", "message": "internal error"})

        core.spawn(ai_part())
