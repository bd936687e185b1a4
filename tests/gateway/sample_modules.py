"""Modules the gateway subprocess loads in the tests (``CHATGW_EXTRA_MODULES``).

``probe``: an ASGI app that answers every HTTP request with the scope it was given (as
JSON), echoes WebSocket frames with a ``new:`` prefix, and notes its lifespan events in
the file named by ``CHATGW_PROBE_LOG`` (when set).
"""

from __future__ import annotations

import json
from typing import Any

from modules import ModuleContext


def _note(path: str | None, event: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(event + "\n")


def create_probe(ctx: ModuleContext) -> Any:
    log_path = ctx.env.get("CHATGW_PROBE_LOG")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    scope["state"]["started_by_lifespan"] = True
                    _note(log_path, "startup")
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    _note(log_path, "shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            size = 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                size += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    break
            body = json.dumps(
                {
                    "side": "new",
                    "method": scope["method"],
                    "path": scope["path"],
                    "raw_path": scope["raw_path"].decode("latin-1"),
                    "query_string": scope["query_string"].decode("latin-1"),
                    "headers": [
                        [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                    ],
                    "state": {k: v for k, v in scope["state"].items() if isinstance(v, bool)},
                    "body_len": size,
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                text = msg.get("text")
                if text is not None and text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                    return
                if text is not None:
                    await send({"type": "websocket.send", "text": "new:" + text})
                else:
                    await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})

    return app
