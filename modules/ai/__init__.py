"""ai-service as an in-process module (legacy-api.md §3, §6 "ai-service").

History, prompt and answers as ``deploy/legacy/ai-service.js`` keeps and composes them,
so that a conversation continues across sides::

    app = create_app(ModuleContext(env={"REDIS_URL": …, "JWT_SECRET_KEY": …,
                                        "DASHSCOPE_API_KEY": …}))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modules import ModuleContext
from modules.ai.dashscope import DashScopeClient, ProviderError, ProviderStream
from modules.common.config import Settings
from modules.common.errors import bad_request, forbidden, not_found, upstream_error
from modules.common.http import ApiRequest, ContractApp, Route, json_response
from modules.common.jsfmt import JSONError, js_dumps, js_len, js_loads, js_trim
from modules.common.sessions import SessionRepo, can_access
from modules.common.store import Store, open_store

__all__ = ["create_app"]

log = logging.getLogger("modules.ai")

SYSTEM_PROMPT = "You are a helpful customer service assistant."
HISTORY_TTL = 86400
HISTORY_KEEP = 50
HISTORY_IN_PROMPT = 20
MAX_MESSAGE = 4000


def history_key(session_id: str) -> str:
    return f"history:{session_id}"


def valid_history_item(raw: str) -> dict[str, str] | None:
    """A stored history item as ``{role, content}``, or ``None`` when it is not one."""
    try:
        item = js_loads(raw)
    except JSONError:
        return None
    if not isinstance(item, dict):
        return None
    role, content = item.get("role"), item.get("content")
    if role not in ("user", "assistant") or not isinstance(content, str):
        return None
    return {"role": role, "content": content}


class _AiService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._client: DashScopeClient | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with (
            open_store(self.settings.redis_url) as store,
            DashScopeClient(self.settings) as client,
        ):
            self._store, self._client = store, client
            try:
                yield
            finally:
                self._store = self._client = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the ai module's lifespan has not started")
        return self._store

    @property
    def client(self) -> DashScopeClient:
        if self._client is None:
            raise RuntimeError("the ai module's lifespan has not started")
        return self._client

    async def _checked(self, req: ApiRequest) -> tuple[str, str]:
        user = req.user()
        body = await req.json_object()
        session_id, message = body.get("sessionId"), body.get("message")
        if not isinstance(session_id, str) or session_id == "":
            raise bad_request("sessionId must be a non-empty string")
        if not isinstance(message, str):
            raise bad_request("message must be a string")
        if not 1 <= js_len(js_trim(message)) <= MAX_MESSAGE:
            raise bad_request(f"message must be 1..{MAX_MESSAGE} characters")
        session = await SessionRepo(self.store).get(session_id)
        if session is None:
            raise not_found("session not found")
        if not can_access(user, session):
            raise forbidden("not your session")
        return session_id, message

    async def _messages(self, session_id: str, message: str) -> list[dict[str, str]]:
        raw = await self.store.lrange(history_key(session_id), -HISTORY_IN_PROMPT, -1)
        history = [item for item in map(valid_history_item, raw) if item is not None]
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            *history,
            {"role": "user", "content": message},
        ]

    async def _append(self, session_id: str, message: str, reply: str) -> None:
        key = history_key(session_id)
        tx = self.store.transaction()
        tx.rpush(
            key,
            js_dumps({"role": "user", "content": message}).decode(),
            js_dumps({"role": "assistant", "content": reply}).decode(),
        )
        tx.ltrim(key, -HISTORY_KEEP, -1)
        tx.expire(key, HISTORY_TTL)
        await tx.execute()

    async def chat(self, req: ApiRequest) -> ASGIApp:
        session_id, message = await self._checked(req)
        messages = await self._messages(session_id, message)
        try:
            result = await self.client.chat(messages)
        except ProviderError as exc:
            log.warning("provider failed (%s): %s", exc.stage, exc.message)
            raise upstream_error(exc.message) from None
        await self._append(session_id, message, result.reply)
        return json_response(
            {
                "sessionId": session_id,
                "reply": result.reply,
                "model": self.settings.dashscope_model,
                "usage": result.usage,
            }
        )

    async def chat_stream(self, req: ApiRequest) -> ASGIApp:
        session_id, message = await self._checked(req)
        messages = await self._messages(session_id, message)
        try:
            stream = await self.client.open_stream(messages)
        except ProviderError as exc:
            log.warning("provider failed before the stream (%s): %s", exc.stage, exc.message)
            raise upstream_error(exc.message) from None
        return _EventStream(self, stream, session_id, message)


def _event(obj: Any) -> bytes:
    return b"data: " + js_dumps(obj) + b"\n\n"


class _EventStream:
    """The started contract stream: deltas as they arrive, then ``done`` or ``error``.

    A client that goes away cancels the relay and releases the provider connection;
    history is appended only when the provider finished (before the ``done`` event).
    """

    def __init__(
        self, svc: _AiService, stream: ProviderStream, session_id: str, message: str
    ) -> None:
        self.svc, self.stream, self.session_id, self.message = svc, stream, session_id, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watch = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watch):
                task.cancel()
            for task in (relay, watch):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await self.stream.aclose()
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()  # type: ignore[misc]

    @staticmethod
    async def _watch_disconnect(receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def _relay(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        reply: list[str] = []
        try:
            async for piece in self.stream.pieces():
                reply.append(piece)
                await send(
                    {
                        "type": "http.response.body",
                        "body": _event({"delta": piece}),
                        "more_body": True,
                    }
                )
        except ProviderError as exc:
            log.warning("provider failed mid-stream (%s): %s", exc.stage, exc.message)
            body = _event({"error": {"code": "upstream_error", "message": exc.message}})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.stream.aclose()
        text = "".join(reply)
        await self.svc._append(self.session_id, self.message, text)
        done = {"done": True, "reply": text, "usage": self.stream.usage}
        await send({"type": "http.response.body", "body": _event(done), "more_body": False})


def create_app(ctx: ModuleContext) -> ASGIApp:
    """The ai-service module (routes of §3 plus ``GET /health``)."""
    settings = Settings.from_env(ctx.env)
    svc = _AiService(settings)
    return ContractApp(
        service="ai-service",
        settings=settings,
        lifespan=svc.lifespan,
        routes=[
            Route("POST", "/api/ai/chat", svc.chat),
            Route("POST", "/api/ai/chat/stream", svc.chat_stream),
        ],
    )
