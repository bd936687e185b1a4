"""Relay one WebSocket to a legacy upstream, frame for frame.

Connect upstream first, then accept the client with the upstream's subprotocol; if the
upstream refuses the upgrade, the client gets the upstream's HTTP answer (the ASGI
WebSocket Denial Response extension) — so ``/ws/`` stays a plain 404, as legacy answers it.
Then two pumps run in one task group: text and binary frames pass through unchanged, and
the first side to close closes the other with the same code and reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from .errors import JSON_CONTENT_TYPE, error_body

log = logging.getLogger("chatgw.ws")

# Codes that must not be sent in a close frame (RFC 6455 §7.4.1): relay them as 1000/1011.
_RESERVED = {1005: 1000, 1006: 1011, 1015: 1011}


def _close_code(code: int | None) -> int:
    if code is None:
        return 1000
    return _RESERVED.get(code, code)


async def _deny(scope: Scope, send: Send, status: int, body: bytes, content_type: bytes) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1011})


async def relay(
    scope: Scope,
    receive: Receive,
    send: Send,
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    connect_timeout: float,
) -> tuple[int, int | None]:
    """Relay until either side closes. Returns (http status of the upgrade, close code)."""
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return 400, None
    subprotocols = list(scope.get("subprotocols") or [])
    try:
        upstream: ClientConnection = await connect(
            url,
            additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            subprotocols=subprotocols or None,
            compression=None,
            open_timeout=connect_timeout,
            ping_interval=None,
            max_size=None,
            max_queue=64,
            proxy=None,
            user_agent_header=None,
        )
    except InvalidStatus as exc:
        resp = exc.response
        ctype = resp.headers.get("content-type", "text/plain").encode("latin-1")
        await _deny(scope, send, resp.status_code, bytes(resp.body or b""), ctype)
        return resp.status_code, None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.warning("websocket upstream unreachable: %s", type(exc).__name__)
        await _deny(
            scope,
            send,
            502,
            error_body(502, "the upstream refused the connection"),
            JSON_CONTENT_TYPE,
        )
        return 502, None

    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    close: dict[str, Any] = {}

    async def client_to_upstream() -> None:
        while True:
            m = await receive()
            t = m["type"]
            if t == "websocket.receive":
                text = m.get("text")
                await upstream.send(text if text is not None else m.get("bytes") or b"")
            elif t == "websocket.disconnect":
                code = m.get("code", 1000)
                close.setdefault("code", code)
                await upstream.close(_close_code(code), m.get("reason") or "")
                return

    async def upstream_to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        rcvd = upstream.close_code
        reason = upstream.close_reason or ""
        if "code" not in close:
            code = _close_code(rcvd if rcvd is not None else int(CloseCode.ABNORMAL_CLOSURE))
            close["code"] = code
            try:
                await send({"type": "websocket.close", "code": code, "reason": reason})
            except (OSError, RuntimeError):  # the client went away meanwhile
                pass

    tasks = [
        asyncio.ensure_future(client_to_upstream()),
        asyncio.ensure_future(upstream_to_client()),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in pending:
            try:
                await t
            except (asyncio.CancelledError, ConnectionClosed, OSError):
                pass
        for t in done:
            failure = t.exception()
            if failure is not None and not isinstance(failure, ConnectionClosed | OSError):
                log.error("websocket relay failed: %r", failure)
    finally:
        for t in tasks:
            t.cancel()
        await upstream.close()
    return 101, close.get("code")
