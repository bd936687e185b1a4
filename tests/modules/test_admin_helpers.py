"""Helpers for the chat-admin module tests: run the app in process, seed rows chat-core
would have written (conversations, messages), mint tokens."""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import jwt.warnings
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from modules import ModuleContext
from modules.admin import create_app
from modules.admin.db import (
    conversation_labels,
    conversations,
    customer_contacts,
    messages,
    now,
)
from modules.admin.db import create_engine as admin_engine

SECRET = "admin-test-secret-0123456789abcdef"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JS_ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
JSON_CT = "application/json; charset=utf-8"


def schema_statements() -> list[str]:
    """schema.sql (deploy/legacy's copy, else the shared contract's), one statement each."""
    path = os.path.join(ROOT, "deploy", "legacy", "schema.sql")
    if not os.path.exists(path):
        path = "/work/shared/contract/schema.sql"
    with open(path, encoding="utf-8") as f:
        text = "\n".join(ln for ln in f.read().splitlines() if not ln.strip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def top_conftest(config: Any) -> Any:
    """The top-level ``tests/conftest.py`` module (``mysql_url``, ``MYSQL_*``); imported by
    pytest as a plugin, not importable by a stable name."""
    top = os.path.join(ROOT, "tests", "conftest.py")
    for plugin in config.pluginmanager.get_plugins():
        if os.path.abspath(getattr(plugin, "__file__", "") or "") == top:
            return plugin
    raise LookupError(top)


def create_mysql_schema(config: Any, database: str) -> str:
    """Run schema.sql in ``database``; return its ``DATABASE_URL`` (asyncmy)."""
    import pymysql

    top = top_conftest(config)
    conn = pymysql.connect(
        host=top.MYSQL_HOST,
        port=top.MYSQL_PORT,
        user=top.MYSQL_USER,
        password=top.MYSQL_PASSWORD,
        database=database,
    )
    with conn.cursor() as cur:
        for stmt in schema_statements():
            cur.execute(stmt)
    conn.close()
    return str(top.mysql_url(database))


def token(role: str = "admin", sub: str = "u-admin", secret: str = SECRET) -> str:
    exp = int(datetime.now(UTC).timestamp()) + 3600
    with warnings.catch_warnings():
        # The legacy stack's test secret is shorter than PyJWT's recommended 32 bytes.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode({"sub": sub, "role": role, "exp": exp}, secret, algorithm="HS256")


@asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[None]:
    """Drive the app's ASGI lifespan (httpx.ASGITransport does not)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, from_app.put)  # type: ignore[arg-type]
    )
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


class Api:
    """An HTTP client on the module with one token per role."""

    def __init__(self, http: httpx.AsyncClient, engine: AsyncEngine, secret: str = SECRET) -> None:
        self.http = http
        self.engine = engine
        self.secret = secret

    async def call(
        self, method: str, path: str, body: Any = None, *, role: str | None = "admin", **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers.setdefault("Authorization", f"Bearer {token(role, secret=self.secret)}")
        if body is not None:
            kw["json"] = body
        return await self.http.request(method, path, headers=headers, **kw)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        r = await self.call(method, path, body)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    # -------------------------------------------------------------- chat-core's rows

    async def conversation(
        self,
        *,
        contact_id: int | None = None,
        session_id: str | None = None,
        updated_at: datetime | None = None,
        status: str = "open",
    ) -> int:
        t = now()
        async with self.engine.begin() as conn:
            if contact_id is None:
                ext = "u-" + uuid.uuid4().hex[:12]
                res = await conn.execute(
                    insert(customer_contacts).values(
                        name=ext, external_id=ext, created_at=t, updated_at=t
                    )
                )
                contact_id = res.inserted_primary_key[0]  # type: ignore[index]
            res = await conn.execute(
                insert(conversations).values(
                    session_id=session_id or str(uuid.uuid4()),
                    contact_id=contact_id,
                    status=status,
                    created_at=t,
                    updated_at=updated_at or t,
                )
            )
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    async def message(self, conv_id: int, text: str, sender: str = "customer") -> str:
        uid = str(uuid.uuid4())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(messages).values(
                    message_uid=uid,
                    conversation_id=conv_id,
                    sender_type=sender,
                    sender_id=None if sender == "ai" else "u-x",
                    content=text,
                    created_at=now(),
                )
            )
        return uid

    async def link(self, conv_id: int, label_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(conversation_labels).values(conversation_id=conv_id, label_id=label_id)
            )


def run_admin(
    database_url: str,
    scenario: Callable[[Api], Awaitable[None]],
    *,
    env: dict[str, str] | None = None,
    seed: bool = True,
) -> None:
    """Run ``scenario(api)`` against a started module, in one ``asyncio.run``.

    ``api.engine`` is a second engine on the same database for seeding rows (not usable
    with ``seed=False``, e.g. for a private in-memory database)."""

    async def main() -> None:
        app = create_app(
            ModuleContext(
                env={"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, **(env or {})}
            )
        )
        seed_engine = admin_engine(database_url if seed else "sqlite+aiosqlite://")
        try:
            async with running(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
                    secret = (env or {}).get("JWT_SECRET_KEY", SECRET)
                    await scenario(Api(http, seed_engine, secret))
        finally:
            await seed_engine.dispose()

    asyncio.run(main())
