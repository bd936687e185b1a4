"""chat-session as an in-process module (legacy-api.md §2, §6 "chat-session").

Sessions live in the shared store in the format the legacy service reads; every check,
its order and every byte of the answers follow ``deploy/legacy/chat-session.js``.
Writes use ``SESSION_WRITE_SHAPE`` (``legacy`` by default).

Shadow dry run (:mod:`gateway.shadow.mirror`): a request carrying
``x-gateway-shadow: dry-run`` runs against a throw-away in-memory store seeded with the
addressed session record (read through from the real store): it answers as it would, and
no production key is written, changed or deleted::

    app = create_app(ModuleContext(env={"REDIS_URL": "redis://…/0", "JWT_SECRET_KEY": "…"}))
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Scope

from modules import ModuleContext
from modules.common.config import Settings
from modules.common.errors import bad_request, forbidden, not_found
from modules.common.http import ApiRequest, ContractApp, Route, empty_response, json_response
from modules.common.jsfmt import js_iso, now_ms
from modules.common.sessions import SessionRepo, WireSession, can_access, session_key
from modules.common.store import MemoryStore, open_store

__all__ = ["create_app"]

AGENTS = ("ai", "human")
_dry_repo: contextvars.ContextVar[SessionRepo | None] = contextvars.ContextVar(
    "session_dry_repo", default=None
)


def merge_object(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """One level of ``Object.assign``, except that ``null`` removes the key."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _optional_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise bad_request(f"{name} must be an object")
    return v


class _SessionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._repo: SessionRepo | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with open_store(self.settings.redis_url) as store:
            self._repo = SessionRepo(store, self.settings.session_write_shape)
            try:
                yield
            finally:
                self._repo = None

    @property
    def repo(self) -> SessionRepo:
        dry = _dry_repo.get()
        if dry is not None:
            return dry
        if self._repo is None:
            raise RuntimeError("the session module's lifespan has not started")
        return self._repo

    async def _load_owned(self, req: ApiRequest) -> WireSession:
        session = await self.repo.get(req.params["sessionId"])
        if session is None:
            raise not_found("session not found")
        if not can_access(req.user(), session):
            raise forbidden("not your session")
        return session

    async def create(self, req: ApiRequest) -> Response:
        user = req.user()
        body = await req.json_object()
        user_id = body.get("userId")
        if user_id is None:
            user_id = user.sub
        elif not isinstance(user_id, str) or user_id == "":
            raise bad_request("userId must be a non-empty string")
        metadata = _optional_object(body, "metadata") or {}
        if user.role == "customer" and user_id != user.sub:
            raise forbidden("customers create sessions for themselves only")
        now = js_iso(now_ms())
        session = WireSession(
            session_id=str(uuid.uuid4()),
            user_id=user_id,
            agent="ai",
            context={},
            metadata=metadata,
            created_at=now,
            updated_at=now,
        )
        await self.repo.write(session)
        return json_response(session.to_wire(), status=201)

    async def list(self, req: ApiRequest) -> Response:
        user = req.user()
        user_id = req.query("userId")
        if not user_id:
            raise bad_request("userId is required")
        if user.role == "customer" and user_id != user.sub:
            raise forbidden("not your sessions")
        sessions = await self.repo.list_for_user(user_id)
        return json_response({"data": [s.to_wire() for s in sessions]})

    async def get(self, req: ApiRequest) -> Response:
        req.user()
        return json_response((await self._load_owned(req)).to_wire())

    async def patch(self, req: ApiRequest) -> Response:
        req.user()
        body = await req.json_object()
        agent = body.get("agent")
        if agent is not None and agent not in AGENTS:
            raise bad_request('agent must be "ai" or "human"')
        context = _optional_object(body, "context")
        metadata = _optional_object(body, "metadata")
        session = await self._load_owned(req)
        session = replace(
            session,
            agent=agent if agent is not None else session.agent,
            context=merge_object(session.context, context) if context else session.context,
            metadata=merge_object(session.metadata, metadata) if metadata else session.metadata,
            updated_at=js_iso(now_ms()),
        )
        await self.repo.write(session)
        return json_response(session.to_wire())

    async def delete(self, req: ApiRequest) -> Response:
        req.user()
        session = await self._load_owned(req)
        await self.repo.delete(session)
        return empty_response(204)

    async def enter_dry_run(self, scope: Scope) -> Callable[[], None]:
        """The request's repo becomes a throw-away one (``ContractApp``'s ``dry_run``)."""
        if self._repo is None:  # not started: the request fails as any other would
            return lambda: None
        token = _dry_repo.set(await self.dry_run(scope))
        return lambda: _dry_repo.reset(token)

    async def dry_run(self, scope: Scope) -> SessionRepo:
        """A throw-away repo for a shadow dry run, seeded with the addressed record."""
        assert self._repo is not None
        mem = MemoryStore()
        parts = scope["path"].rstrip("/").split("/")
        if len(parts) == 4 and parts[:3] == ["", "api", "sessions"]:
            key = session_key(parts[3])
            raw = await self._repo.store.get(key)
            if raw is not None:
                await mem.set(key, raw, ex=86400)
        return SessionRepo(mem, self.settings.session_write_shape)


def create_app(ctx: ModuleContext) -> ASGIApp:
    """The chat-session module (routes of §2 plus ``GET /health``)."""
    settings = Settings.from_env(ctx.env)
    svc = _SessionService(settings)
    return ContractApp(
        service="chat-session",
        settings=settings,
        lifespan=svc.lifespan,
        dry_run=svc.enter_dry_run,
        routes=[
            Route("POST", "/api/sessions", svc.create),
            Route("GET", "/api/sessions", svc.list),
            Route("GET", "/api/sessions/{sessionId}", svc.get),
            Route("PATCH", "/api/sessions/{sessionId}", svc.patch),
            Route("DELETE", "/api/sessions/{sessionId}", svc.delete),
        ],
    )
