"""The bench's JSON answer and the small Starlette app that serves it.

One body for every target: Node serves :data:`BODY` (passed in ``BENCH_BODY``), and the
same Starlette app answers it twice, bare under uvicorn (``bench.bench_module:bare_app``)
and in process behind the gateway, registered for the gateway subprocess with
``CHATGW_EXTRA_MODULES=bench=bench.bench_module:create_app`` (the hook in
``modules/__init__.py``). Bench-only: nothing in the product imports this.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY_SIZE = 409


def _body(size: int = BODY_SIZE) -> bytes:
    items = [
        {
            "id": 1000 + i,
            "room": "general",
            "user": f"u{i}",
            "text": "hello from the legacy chat service",
            "ts": 1700000000 + i,
        }
        for i in range(3)
    ]
    skeleton = orjson.dumps({"ok": True, "items": items, "pad": ""})
    return orjson.dumps({"ok": True, "items": items, "pad": "." * (size - len(skeleton))})


BODY = _body()
assert len(BODY) == BODY_SIZE


async def answer(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


def create_app(ctx: Any = None) -> Starlette:
    """The module factory (``ctx`` is the gateway's ModuleContext; unused)."""
    return Starlette(routes=[Route("/api/{rest:path}", answer, methods=["GET"])])


bare_app = create_app()


def session_app() -> Any:
    """The real session module standalone (``uvicorn --factory``): the bare reference for
    the gateway's in-process session path, doing the same JWT check and Redis read."""
    import os

    from modules import ModuleContext, get_factory

    return get_factory("session")(ModuleContext(dispatcher=None, env=os.environ))


def redis_app() -> Starlette:
    """A bare Starlette endpoint doing the session GET's Redis read (``uvicorn --factory``):
    issue 9's reference for the in-process session path. Same client library and options
    as modules/common/store.py, one pool per process; no JWT check, no reshaping.

    With ``BENCH_GATEWAY_GC=1`` it runs with the gateway's garbage-collector settings
    (gateway/gc_tuning.py: thresholds from ``CHATGW_GC_THRESHOLD``, the start-up heap
    frozen once serving): the reference for what the gateway and module layers cost
    apart from that tuning."""
    import os
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    import redis.asyncio as aioredis
    from starlette.responses import JSONResponse

    lifespan = None
    if os.environ.get("BENCH_GATEWAY_GC") == "1":
        from gateway.gc_tuning import apply_gc_threshold, freeze_startup_heap, gc_threshold

        apply_gc_threshold(gc_threshold())

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            freeze_startup_heap()
            yield

    client = aioredis.Redis.from_url(
        os.environ["REDIS_URL"], decode_responses=True, max_connections=64
    )

    async def get_session(request: Request) -> Response:
        raw = await client.get("session:" + request.path_params["sid"])
        if raw is None:
            return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
        return Response(raw, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[Route("/api/sessions/{sid}", get_session), Route("/health", health)],
        lifespan=lifespan,
    )
