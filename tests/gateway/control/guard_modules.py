"""A module that fails on demand, for the guard tests (``CHATGW_EXTRA_MODULES``).

``flaky`` answers 200 until the file named by ``CHATGW_FLAKY_FILE`` exists; then, by the
file's content: ``500`` answers 500, ``raise`` raises (the gateway answers 500), ``slow``
answers after 300 ms. WebSocket: echoes text, raises on ``crash`` (an abnormal close).
"""

from __future__ import annotations

import asyncio
from typing import Any

from modules import ModuleContext


def create_flaky(ctx: ModuleContext) -> Any:
    fault_file = ctx.env.get("CHATGW_FLAKY_FILE", "")

    def fault() -> str:
        try:
            with open(fault_file, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                kind = msg["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        elif scope["type"] == "http":
            while (await receive()).get("more_body", False):
                pass
            mode = fault()
            if mode == "raise":
                raise RuntimeError("flaky module: injected failure")
            if mode == "slow":
                await asyncio.sleep(0.3)
            status = 500 if mode == "500" else 200
            body = b'{"side":"new","status":%d}' % status
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("text") == "crash":
                    raise RuntimeError("flaky module: injected WebSocket crash")
                await send({"type": "websocket.send", "text": msg.get("text") or ""})

    return app
