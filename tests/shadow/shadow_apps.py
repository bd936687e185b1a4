"""A tiny service for the shadow tests: the "legacy" upstream and the "new" module at once.

``upstream`` is run by uvicorn as the legacy side; ``create_module`` is loaded by the
gateway (``CHATGW_EXTRA_MODULES=shadowtest=tests.shadow.shadow_apps:create_module``).
Knobs, read per request from the environment of the process that runs the module:

``SHADOW_TEST_SLOW``   seconds the module sleeps before answering (slow shadow side)
``SHADOW_TEST_BREAK``  1: the module answers ``name`` in upper case (a deliberate bug)
``SHADOW_TEST_FAIL_IN_WORKER``  1: the module fails to start in the shadow worker process
                       (``settings.shadow.isolation: process``), and only there

Endpoints: ``GET /api/items/{id}`` → ``{"id", "name", "at", "nonce"}`` (``nonce`` random:
noise), ``GET /api/headers`` → the request headers it received, ``GET /api/big?n=`` → n
bytes of JSON, ``POST /api/items`` → counts writes (``GET /api/writes`` reads the count),
``GET /api/stream`` → a small SSE stream, ``GET /api/pid`` → the process that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WRITES = {"n": 0}


def _in_shadow_worker() -> bool:
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec is not None and spec.name == "gateway.shadow.worker"


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    if os.environ.get("SHADOW_TEST_FAIL_IN_WORKER") == "1" and _in_shadow_worker():
        raise RuntimeError("shadowtest refuses to start in the shadow worker (test knob)")
    yield


def _app(side: str) -> Starlette:
    async def item(request: Request) -> Response:
        delay = float(os.environ.get("SHADOW_TEST_SLOW", "0") or 0) if side == "new" else 0.0
        if delay:
            await asyncio.sleep(delay)
        name = f"item-{request.path_params['id']}"
        if side == "new" and os.environ.get("SHADOW_TEST_BREAK") == "1":
            name = name.upper()
        body: dict[str, Any] = {
            "id": request.path_params["id"],
            "name": name,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "nonce": secrets.token_hex(4),
            "password": "hunter2",
        }
        return JSONResponse(body)

    async def headers(request: Request) -> Response:
        return JSONResponse({"side": side, "headers": dict(request.headers)})

    async def big(request: Request) -> Response:
        n = int(request.query_params.get("n", "1000"))
        return JSONResponse({"data": "x" * n})

    async def write(request: Request) -> Response:
        await request.body()
        WRITES["n"] += 1
        return JSONResponse({"ok": True}, status_code=201)

    async def writes(request: Request) -> Response:
        return JSONResponse({"side": side, "writes": WRITES["n"]})

    async def pid(request: Request) -> Response:
        return JSONResponse({"side": side, "pid": os.getpid()})

    async def stream(request: Request) -> Response:
        async def events() -> Any:
            for piece in ("Hel", "lo") if side == "legacy" else ("H", "ello"):
                yield f'data: {{"delta": "{piece}"}}\n\n'
            yield 'data: {"done": true, "reply": "Hello"}\n\n'

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/api/items/{id}", item),
            Route("/api/items", write, methods=["POST"]),
            Route("/api/writes", writes),
            Route("/api/headers", headers, methods=["GET", "POST"]),
            Route("/api/big", big),
            Route("/api/stream", stream),
            Route("/api/pid", pid),
        ],
        lifespan=_lifespan if side == "new" else None,
    )


upstream = _app("legacy")


def create_module(ctx: Any) -> Starlette:
    return _app("new")
