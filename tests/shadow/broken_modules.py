"""A deliberately incompatible module for the tests (never shipped): the session module
answering ``agent`` in upper case. Loaded with
``CHATGW_EXTRA_MODULES=session_broken=tests.shadow.broken_modules:create_session``."""

from __future__ import annotations

from typing import Any

from starlette.types import Message, Receive, Scope, Send

from modules import ModuleContext
from modules.session import create_app


def create_session(ctx: ModuleContext) -> Any:
    inner = create_app(ctx)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await inner(scope, receive, send)
            return

        async def send_broken(msg: Message) -> None:
            if msg["type"] == "http.response.body":
                msg = {
                    **msg,
                    "body": msg.get("body", b"").replace(b'"agent":"ai"', b'"agent":"AI"'),
                }
            await send(msg)

        await inner(scope, receive, send_broken)

    return app
