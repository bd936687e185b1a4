"""The admin listener (default 127.0.0.1:9000), apart from client traffic.

``GET /metrics`` (Prometheus text format), ``GET /ready`` (200 once the config is loaded,
every module started and the client listener listening; 503 before, while draining, and
if the client listener is not listening), ``GET /health``, and the
control API under ``/api`` (:mod:`gateway.control.api`, bearer token) and the dashboard
page ``/dashboard`` (:mod:`gateway.control.dashboard`) when a control plane is attached.
/metrics and /ready stay open for Prometheus and probes.

``/ready`` says ``"status": "degraded"`` **with 200** when the weight store (Redis) is
unreachable: the replica keeps serving with the last known weights, and answering 503
would make every replica leave the load balancer at once over a control-plane outage.
Alert on ``gateway_control_store_up == 0`` instead; ``control`` in the body says why.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .app import Gateway
    from .control.plane import ControlPlane


def listening(sock: socket.socket) -> bool:
    """The socket accepts connections (``SO_ACCEPTCONN``): bound is not enough."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:  # closed
        return False


def create_admin_app(gateway: Gateway, control: ControlPlane | None = None) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def ready(request: Request) -> Response:
        config = gateway.table.config
        ok = gateway.ready and all(map(listening, gateway.client_sockets))
        if ok:
            status = "ready"
        elif gateway.draining:
            status = "draining"
        else:
            status = "not listening" if gateway.ready else "starting"
        body: dict[str, object] = {
            "status": status,
            "config": config.source,
            "routes": len(config.routes),
            "modules": sorted({r.module for r in config.routes if r.module}),
        }
        if control is not None:
            body["control"] = {"version": control.version, "store": control.store_view()}
            if ok and control.controller.degraded:
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "chat-gateway-admin"})

    from .shadow.api import routes as shadow_routes

    extra = []
    if control is not None:
        from .control.api import routes as control_routes
        from .control.dashboard import routes as dashboard_routes

        extra = [*control_routes(control), *dashboard_routes(control)]  # + /dashboard, /api/guard
    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/ready", ready),
            Route("/health", health),
            *shadow_routes(gateway, control),  # /api/shadow, /api/shadow/samples
            *extra,
        ]
    )
