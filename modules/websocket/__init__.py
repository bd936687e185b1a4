"""chat-core as an in-process module: ``POST /api/messages``,
``GET /api/sessions/{sessionId}/messages`` and the ``/ws`` WebSocket (legacy-api.md §4,
§6 "chat-core"; the port of ``deploy/legacy/chat-core.js`` and ``lib/messages.js``).

Sockets on this module and on legacy chat-core instances are peers: every frame for a
session goes through the contract's Redis channel ``chat:session:{sessionId}``
(:mod:`modules.websocket.hub`). Messages are stored in the production MySQL tables
exactly as legacy stores them (:mod:`modules.websocket.messages`); the AI is asked
through the gateway's dispatcher so the ai route's split applies
(:mod:`modules.websocket.ai`). Slow sockets are dropped with close code 1013 when their
send queue is full (:mod:`modules.websocket.connection`).

Settings (``ModuleContext.env``): ``REDIS_URL`` (none: in-process store and pub/sub, one
process only), ``DATABASE_URL`` (``mysql+asyncmy://…``; none: the SQLite default shared
with ``modules/admin``), ``JWT_SECRET_KEY``, ``SESSION_WRITE_SHAPE``, and
``AI_SERVICE_URL`` / ``AI_SERVICE_TIMEOUT_MS`` (standalone only / 40 000 ms),
``WS_SEND_QUEUE`` (256 frames).

Example::

    app = create_app(ModuleContext(env={"REDIS_URL": "redis://redis:6379/0",
                                        "DATABASE_URL": "mysql+asyncmy://chat:pw@db/chat",
                                        "JWT_SECRET_KEY": "…"}))

    # routes.yaml
    # - name: ws
    #   match: {path: /ws, websocket: true}
    #   legacy: chat-core
    #   module: websocket
    #   new_percent: 10
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from modules import ModuleContext
from modules.common.config import Settings
from modules.common.dryrun import flag_dry_run
from modules.common.http import ContractApp, Route
from modules.websocket.connection import serve_websocket
from modules.websocket.core import ChatCore, CoreOptions

__all__ = ["create_app"]


class _ChatCoreApp:
    """HTTP and lifespan through :class:`ContractApp`; WebSocket scopes to ``/ws``."""

    def __init__(self, core: ChatCore, http: ASGIApp) -> None:
        self.core = core
        self.http = http
        # the dry-run support the mirror checks for is its HTTP side's (ContractApp's dry_run)
        self.shadow_dry_run: bool = getattr(http, "shadow_dry_run", False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self.core, scope, receive, send)
        else:
            await self.http(scope, receive, send)


def create_app(ctx: ModuleContext) -> ASGIApp:
    """The chat-core ASGI app (HTTP routes, ``/ws``, ``GET /health``, lifespan)."""
    settings = Settings.from_env(ctx.env)
    core = ChatCore(settings, CoreOptions.from_env(ctx.env), ctx.dispatcher)
    http = ContractApp(
        service="chat-core",
        settings=settings,
        lifespan=core.lifespan,
        routes=[
            Route("POST", "/api/messages", core.post_message),
            Route("GET", "/api/sessions/{sessionId}/messages", core.list_messages),
        ],
        # Shadow copies marked dry-run: message insert rolled back, nothing delivered.
        dry_run=flag_dry_run,
    )
    return _ChatCoreApp(core, http)
