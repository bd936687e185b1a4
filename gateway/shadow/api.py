"""Shadow results on the admin listener (bearer token, as the control API).

==========  ==================================  ==========================================
GET         /api/shadow                         per route: counts, match rate (all time and
                                                over the window), mismatch rate, % mirrored
GET         /api/shadow/samples?route=&limit=   the latest mismatch samples (redacted)
==========  ==================================  ==========================================

Auth is the control plane's: ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`` checked by
:class:`gateway.control.auth.Tokens` (403 when no token is configured, 401 when wrong).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..control.auth import TokenConfigError, Tokens

if TYPE_CHECKING:
    from ..app import Gateway
    from ..control.plane import ControlPlane


def _error(status: int, message: str) -> JSONResponse:
    code = {401: "unauthorized", 403: "forbidden", 400: "bad_request"}.get(status, "error")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def shadow_status(gateway: Gateway) -> dict[str, Any]:
    results = gateway.shadow.results.rates()
    routes: dict[str, Any] = {}
    for r in gateway.table.config.routes:
        if r.shadow is None and r.name not in results:
            continue
        routes[r.name] = {
            "percent": r.shadow.basis / 100 if r.shadow else 0,
            "methods": sorted(r.shadow.methods) if r.shadow else [],
            "dry_run": r.shadow.dry_run if r.shadow else False,
            **results.get(
                r.name,
                {"counts": {}, "match_rate": None, "window": None, "mismatch_rate": None},
            ),
        }
    mirror = gateway.shadow
    queue = mirror.queue
    out: dict[str, Any] = {
        "routes": routes,
        "queue": {"depth": queue.qsize() if queue else 0, "size": queue.maxsize if queue else 0},
        "samples": len(mirror.results.samples),
        "isolation": mirror.isolation,
    }
    worker = mirror.live_worker
    if worker is not None:
        out["worker"] = {
            "pid": worker.pid,
            "in_flight": len(worker.in_flight),
            "cpu_seconds": round(worker.cpu_total, 6),
            "restarts": worker.restarted,
            "gc": worker.gc,
        }
    return out


def routes(gateway: Gateway, control: ControlPlane | None = None) -> list[Route]:
    tokens_error = ""
    if control is not None:
        tokens, tokens_error = control.tokens, control.tokens_error
    else:
        try:
            tokens = Tokens.from_env(gateway.env)
        except TokenConfigError as exc:
            tokens, tokens_error = Tokens(()), str(exc)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not tokens.configured:
                return _error(403, tokens_error or "GATEWAY_ADMIN_TOKEN is not set on this gateway")
            if tokens.who(request.headers.get("authorization")) is None:
                return _error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
            return await handler(request)

        return endpoint

    async def status(request: Request) -> Response:
        return JSONResponse(shadow_status(gateway))

    async def samples(request: Request) -> Response:
        route = request.query_params.get("route") or None
        raw = request.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            return _error(400, "limit must be a whole number between 1 and 1000")
        items = gateway.shadow.results.sample_list(route, int(raw))
        return JSONResponse({"data": items})

    return [
        Route("/api/shadow", guarded(status), methods=["GET"]),
        Route("/api/shadow/samples", guarded(samples), methods=["GET"]),
    ]
