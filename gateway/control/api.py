"""The control API, mounted on the admin listener under ``/api`` (OpenAPI: ``/api/openapi.json``).

Every endpoint but the OpenAPI document needs ``Authorization: Bearer <token>`` (see
:mod:`.auth`), reads included. With no token configured every request is answered 403
saying so; a missing or wrong token is 401. Errors use the contract's shape
``{"error": {"code", "message"}}`` (a refused reload adds ``issues``).

==========  ====================================  =========================================
GET         /api/routes                           every route: % new, ramp, live figures
GET         /api/routes/{route}                   one route
PUT         /api/routes/{route}/percent           {"percent": 25, "reason": "..."}
POST        /api/routes/{route}/reset             back to the routes.yaml share
POST        /api/routes/{route}/rollback          0 % new, stops its ramp
POST        /api/rollback                         every route back to legacy
POST        /api/routes/{route}/ramp              {"steps": [1, 5, 25], "every": "10m"}
POST        /api/routes/{route}/ramp/stop         stop (or clear a halted) ramp
GET         /api/audit?limit=100&route=NAME       the audit trail, newest first
POST        /api/reload                           re-read routes.yaml (422 + issues if refused)
GET         /api/version                          the live-weights version applied here
==========  ====================================  =========================================

Write bodies may carry ``"source"``: ``api`` (default), ``cli`` or ``dashboard``; the
audit's ``who`` is the token's name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import parse_duration, parse_percent
from ..errors import ERROR_CODES, ChangeRefused, StoreUnavailable, UnknownRouteError
from .openapi import OPENAPI

if TYPE_CHECKING:
    from .plane import ControlPlane

HTTP_SOURCES = ("api", "cli", "dashboard")
Handler = Callable[[Request, str], Awaitable[Response]]


def error(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code or ERROR_CODES.get(status, "error"), "message": message}
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class _BadRequest(Exception):
    pass


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise _BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


def _reason(body: dict[str, Any], *, required: bool) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or (required and not reason.strip()):
        raise _BadRequest("'reason' is required: say why, it goes into the audit trail")
    return reason.strip()[:500]


def _source(body: dict[str, Any]) -> str:
    source = body.get("source", "api")
    if source not in HTTP_SOURCES:
        raise _BadRequest(f"'source' must be one of {', '.join(HTTP_SOURCES)}")
    return str(source)


def _basis(value: Any, what: str = "'percent'") -> int:
    basis = parse_percent(value)
    if basis is None or isinstance(value, str):
        raise _BadRequest(f"{what} {value!r} is not a number between 0 and 100 (2 decimals)")
    return basis


def routes(plane: ControlPlane) -> list[Route]:
    """The ``/api`` routes of the admin app."""

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not plane.tokens.configured:
                why = plane.tokens_error or (
                    "GATEWAY_ADMIN_TOKEN is not set on this gateway: the control API is "
                    "disabled until it is (or GATEWAY_ADMIN_TOKENS)"
                )
                return error(403, why)
            who = plane.tokens.who(request.headers.get("authorization"))
            if who is None:
                return error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
            try:
                return await handler(request, who)
            except _BadRequest as exc:
                return error(400, str(exc))
            except UnknownRouteError as exc:
                return error(404, str(exc))
            except ChangeRefused as exc:
                return error(exc.status, str(exc))
            except StoreUnavailable as exc:
                return error(503, str(exc), "store_unavailable")

        return endpoint

    async def list_routes(request: Request, who: str) -> Response:
        return JSONResponse(plane.status())

    async def one_route(request: Request, who: str) -> Response:
        route = plane.route(request.path_params["route"])
        return JSONResponse({"version": plane.version, **plane.route_view(route)})

    async def set_percent(request: Request, who: str) -> Response:
        body = await _body(request)
        if "percent" not in body:
            raise _BadRequest("'percent' is required (0..100)")
        basis = _basis(body["percent"])
        out = await plane.set_percent(
            request.path_params["route"], basis, who=who,
            reason=_reason(body, required=True), source=_source(body),
        )  # fmt: skip
        return JSONResponse(out)

    async def reset(request: Request, who: str) -> Response:
        body = await _body(request)
        out = await plane.reset(
            request.path_params["route"], who=who,
            reason=_reason(body, required=True), source=_source(body),
        )  # fmt: skip
        return JSONResponse(out)

    async def rollback_one(request: Request, who: str) -> Response:
        body = await _body(request)
        out = await plane.rollback(
            request.path_params["route"], who=who,
            reason=_reason(body, required=True), source=_source(body),
        )  # fmt: skip
        return JSONResponse(out)

    async def rollback_all(request: Request, who: str) -> Response:
        body = await _body(request)
        out = await plane.rollback(
            None, who=who, reason=_reason(body, required=True), source=_source(body)
        )
        return JSONResponse(out)

    async def ramp_start(request: Request, who: str) -> Response:
        body = await _body(request)
        steps = body.get("steps")
        if not isinstance(steps, list) or not steps:
            raise _BadRequest("'steps' must be a non-empty list of percentages")
        basis = [_basis(s, "step") for s in steps]
        every = parse_duration(body.get("every"))
        if every is None:
            raise _BadRequest(f"'every' {body.get('every')!r} is not a duration like 10m or 200ms")
        out = await plane.ramps.begin(
            request.path_params["route"], basis, every, who=who,
            reason=_reason(body, required=True), source=_source(body),
        )  # fmt: skip
        return JSONResponse(out, status_code=201)

    async def ramp_stop(request: Request, who: str) -> Response:
        body = await _body(request)
        out = await plane.ramps.end(
            request.path_params["route"], who=who,
            reason=_reason(body, required=False), source=_source(body),
        )  # fmt: skip
        return JSONResponse(out)

    async def audit(request: Request, who: str) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise _BadRequest("'limit' must be a whole number") from None
        if not 1 <= limit <= 10_000:
            raise _BadRequest("'limit' must be between 1 and 10000")
        route = request.query_params.get("route") or None
        entries = await plane.audit(limit, route)
        return JSONResponse({"entries": [e.to_dict() for e in entries]})

    async def reload(request: Request, who: str) -> Response:
        body = await _body(request)
        result = await plane.reloader.reload(
            who=who, source=_source(body), trigger="api", reason=_reason(body, required=False)
        )
        if result.ok:
            return JSONResponse({**result.to_dict(), "version": plane.version})
        n = len(result.issues)
        return error(
            422, f"{plane.reloader.path}: {n} problem{'s' if n != 1 else ''}, config refused; "
            "the last good config keeps serving", "config_refused", issues=result.to_dict()["issues"],
        )  # fmt: skip

    async def version(request: Request, who: str) -> Response:
        c = plane.controller
        return JSONResponse(
            {"version": plane.version, "applied_at": c.applied_at, "degraded": c.degraded}
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return [
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/version", guarded(version), methods=["GET"]),
        Route("/api/routes", guarded(list_routes), methods=["GET"]),
        Route("/api/routes/{route}", guarded(one_route), methods=["GET"]),
        Route("/api/routes/{route}/percent", guarded(set_percent), methods=["PUT"]),
        Route("/api/routes/{route}/reset", guarded(reset), methods=["POST"]),
        Route("/api/routes/{route}/rollback", guarded(rollback_one), methods=["POST"]),
        Route("/api/rollback", guarded(rollback_all), methods=["POST"]),
        Route("/api/routes/{route}/ramp", guarded(ramp_start), methods=["POST"]),
        Route("/api/routes/{route}/ramp/stop", guarded(ramp_stop), methods=["POST"]),
        Route("/api/audit", guarded(audit), methods=["GET"]),
        Route("/api/reload", guarded(reload), methods=["POST"]),
    ]
