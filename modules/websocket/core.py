"""chat-core's logic shared by HTTP and WebSocket: sessions, routing, storage, delivery.

A port of ``ChatCore`` in ``deploy/legacy/chat-core.js`` minus the socket handling
(:mod:`modules.websocket.connection`). The checks run in the contract's order
(legacy-api.md §1, CONTRACT-NOTES "chat-core"):

- ``POST /api/messages``: 401 → 413 → 400 (``sessionId``, ``text``) → 404 → 403; the
  message is stored, published (and delivered locally) before the answer; a customer on
  an ``ai`` session then gets the AI reply, stored and published the same way;
- ``GET /api/sessions/{sessionId}/messages``: 401 → 400 (``limit``, ``before``, looked up
  before the session is read) → 404 → 403.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from starlette.responses import Response

from modules import Dispatcher
from modules.admin.db import create_engine, prepare
from modules.common.auth import User
from modules.common.config import ConfigError, Settings
from modules.common.dryrun import DRY_RUN
from modules.common.errors import bad_request, forbidden, not_found
from modules.common.http import ApiRequest, json_response
from modules.common.jsfmt import js_iso, js_len, js_trim, now_ms
from modules.common.sessions import SessionRepo, WireSession, can_access
from modules.common.store import open_store
from modules.websocket.ai import DEFAULT_AI_SERVICE_URL, DEFAULT_AI_TIMEOUT_MS, AiClient
from modules.websocket.gate import gated
from modules.websocket.hub import Hub
from modules.websocket.messages import MessageStore

__all__ = ["ChatCore", "CoreOptions", "require_session_id", "require_text", "sender_kind"]

log = logging.getLogger("modules.websocket")

MAX_TEXT = 4000
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class CoreOptions:
    """chat-core's own settings (beyond :class:`Settings`).

    - ``AI_SERVICE_URL`` (standalone only; in the gateway the dispatcher routes the call),
    - ``AI_SERVICE_TIMEOUT_MS`` (default 40 000),
    - ``WS_SEND_QUEUE``: frames waiting for one slow socket before it is dropped (256).
    """

    ai_service_url: str = DEFAULT_AI_SERVICE_URL
    ai_timeout_ms: int = DEFAULT_AI_TIMEOUT_MS
    send_queue: int = 256

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CoreOptions:
        problems: list[str] = []

        def positive(name: str, default: int) -> int:
            raw = env.get(name) or str(default)
            if raw.isdigit() and int(raw) > 0:
                return int(raw)
            problems.append(f"{name}={raw!r} is not a positive integer")
            return default

        opts = cls(
            ai_service_url=env.get("AI_SERVICE_URL") or DEFAULT_AI_SERVICE_URL,
            ai_timeout_ms=positive("AI_SERVICE_TIMEOUT_MS", DEFAULT_AI_TIMEOUT_MS),
            send_queue=positive("WS_SEND_QUEUE", 256),
        )
        if problems:
            raise ConfigError("; ".join(problems))
        return opts


def sender_kind(user: User) -> str:
    return "customer" if user.role == "customer" else "agent"


def require_session_id(obj: Mapping[str, Any]) -> str:
    """``sessionId`` must be a non-empty string (400)."""
    sid = obj.get("sessionId")
    if not isinstance(sid, str) or sid == "":
        raise bad_request("sessionId must be a non-empty string")
    return sid


def require_text(obj: Mapping[str, Any]) -> str:
    """``text``: a string of 1..4000 UTF-16 units after trimming (400); returned as given."""
    text = obj.get("text")
    if not isinstance(text, str):
        raise bad_request("text must be a string")
    if not 1 <= js_len(js_trim(text)) <= MAX_TEXT:
        raise bad_request(f"text must be 1..{MAX_TEXT} characters")
    return text


def _query_limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= 200:
        raise bad_request("limit must be between 1 and 200")
    return int(raw)


class ChatCore:
    """One per app: its lifespan opens the store, the database, the hub and the AI client."""

    def __init__(
        self, settings: Settings, options: CoreOptions, dispatcher: Dispatcher | None
    ) -> None:
        self.settings = settings
        self.options = options
        self.dispatcher = dispatcher
        self._parts: tuple[SessionRepo, MessageStore, Hub, AiClient] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        #: Open sockets (``connection.Connection``), closed with 1001 at shutdown.
        self.sockets: set[Any] = set()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            store = gated(await stack.enter_async_context(open_store(self.settings.redis_url)))
            engine = create_engine(self.settings.database_url)
            stack.push_async_callback(engine.dispose)
            await prepare(engine)
            hub = Hub(store, self.settings.redis_url)
            await hub.start()
            stack.push_async_callback(hub.close)
            stack.push_async_callback(self._close_sockets)
            ai = await stack.enter_async_context(
                AiClient(
                    self.dispatcher,
                    self.options.ai_service_url,
                    timeout_ms=self.options.ai_timeout_ms,
                )
            )
            stack.push_async_callback(self._cancel_background)
            self._parts = (
                SessionRepo(store, self.settings.session_write_shape),
                MessageStore(engine),
                hub,
                ai,
            )
            try:
                yield
            finally:
                self._parts = None

    async def _close_sockets(self) -> None:
        """Shutdown: every open socket is closed with 1001, as legacy does on SIGTERM."""
        for conn in list(self.sockets):
            conn.close(1001, "shutting down")
        for _ in range(100):  # up to 2 s for the writers to flush the close frames
            if not self.sockets:
                break
            await asyncio.sleep(0.02)

    async def _cancel_background(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.wait(list(self.background), timeout=5)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` detached (kept referenced, cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def _started(self) -> tuple[SessionRepo, MessageStore, Hub, AiClient]:
        if self._parts is None:
            raise RuntimeError("the websocket module's lifespan has not started")
        return self._parts

    @property
    def sessions(self) -> SessionRepo:
        return self._started()[0]

    @property
    def messages(self) -> MessageStore:
        return self._started()[1]

    @property
    def hub(self) -> Hub:
        return self._started()[2]

    @property
    def ai(self) -> AiClient:
        return self._started()[3]

    # ---- sessions and routing

    async def load_session(self, user: User, session_id: str) -> WireSession:
        session = await self.sessions.get(session_id)
        if session is None:
            raise not_found("session not found")
        if not can_access(user, session):
            raise forbidden("not your session")
        return session

    @staticmethod
    def routes_to_ai(user: User, session: WireSession) -> bool:
        """The migration guide's MessageRouter: a customer on an ``ai`` session."""
        return session.agent == "ai" and user.role == "customer"

    async def store_from(self, user: User, session: WireSession, text: str) -> dict[str, Any]:
        return await self.messages.store(
            session_id=session.session_id,
            user_id=session.user_id,
            sender=sender_kind(user),
            sender_id=user.sub,
            text=text,
        )

    async def ai_reply(
        self, authorization: str | None, session: WireSession, text: str
    ) -> dict[str, Any]:
        """Ask, store, deliver; the reply message (502 ``ApiError`` on AI failure)."""
        reply = await self.ai.chat(authorization, session.session_id, text)
        message = await self.messages.store(
            session_id=session.session_id,
            user_id=session.user_id,
            sender="ai",
            sender_id=None,
            text=reply,
        )
        await self.hub.publish(session.session_id, {"type": "message", "message": message}, None)
        return message

    async def handoff(self, session: WireSession) -> None:
        """Agent ``human`` (legacy-shape write, TTLs reset, ``updatedAt`` now), then tell
        every joined socket. Idempotent on a ``human`` session."""
        await self.sessions.write(replace(session, agent="human", updated_at=js_iso(now_ms())))
        await self.hub.publish(
            session.session_id,
            {"type": "handoff", "sessionId": session.session_id, "agent": "human"},
            None,
        )

    # ---- HTTP

    async def post_message(self, req: ApiRequest) -> Response:
        user = req.user()
        body = await req.json_object()
        session_id = require_session_id(body)
        text = require_text(body)
        session = await self.load_session(user, session_id)
        message = await self.store_from(user, session, text)
        if DRY_RUN.get():
            # A shadow dry run: the message was built and its insert rolled back; nothing is
            # delivered and the AI is not asked (that would append to the real history), so
            # the shadow's `reply` is null — ignore `$.reply` on routes shadowed this way.
            return json_response({"message": message, "reply": None}, status=201)
        await self.hub.publish(session_id, {"type": "message", "message": message}, None)
        reply = None
        if self.routes_to_ai(user, session):
            reply = await self.ai_reply(req.header("authorization"), session, text)
        return json_response({"message": message, "reply": reply}, status=201)

    async def list_messages(self, req: ApiRequest) -> Response:
        user = req.user()
        session_id = req.params["sessionId"]
        limit = _query_limit(req.query("limit"))
        before = req.query("before")
        before_id = None
        if before is not None:
            before_id = await self.messages.resolve_before(session_id, before)
        await self.load_session(user, session_id)
        data = await self.messages.list(session_id, limit=limit, before_id=before_id)
        return json_response({"data": data})
