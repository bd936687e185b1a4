"""Helpers for the module tests (import as ``from module_helpers import …``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from modules import ModuleContext, get_factory

SECRET = "module-test-secret-0123456789"
JSON_CT = "application/json; charset=utf-8"
JS_ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def token(
    sub: object = "u-1",
    role: str = "customer",
    *,
    secret: str = SECRET,
    exp_in: float | None = 3600,
    algorithm: str = "HS256",
    **claims: object,
) -> str:
    payload: dict[str, object] = {"sub": sub, "role": role, **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return encode_jwt(payload, secret, algorithm)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def encode_jwt(payload: dict[str, object], secret: str, algorithm: str = "HS256") -> str:
    """HMAC JWT, as jsonwebtoken.sign makes them (PyJWT warns on short test secrets)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    head = _b64(json.dumps({"alg": algorithm, "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), digest[algorithm]).digest()
    return f"{head}.{body}.{_b64(sig)}"


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type") == JSON_CT
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan (``httpx.ASGITransport`` does not)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await to_app.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app.get, from_app.put)
    )
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await task


def module_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {"JWT_SECRET_KEY": SECRET, **extra}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@asynccontextmanager
async def serve(
    name: str, env: Mapping[str, str], *, timeout: float = 15
) -> AsyncIterator[httpx.AsyncClient]:
    """Module ``name`` started (lifespan) and an HTTP client calling it in process."""
    app = get_factory(name)(ModuleContext(dispatcher=None, env=dict(env)))
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://module", timeout=timeout
        ) as client:
            yield client


@asynccontextmanager
async def serve_many(
    names: list[str], env: Mapping[str, str]
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Several modules in one process (sharing one store, as in the gateway)."""
    clients: dict[str, httpx.AsyncClient] = {}
    async with _stack(names, env, clients):
        yield clients


@asynccontextmanager
async def _stack(
    names: list[str], env: Mapping[str, str], clients: dict[str, httpx.AsyncClient]
) -> AsyncIterator[None]:
    if not names:
        yield
        return
    async with serve(names[0], env) as client:
        clients[names[0]] = client
        async with _stack(names[1:], env, clients):
            yield
