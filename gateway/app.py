"""The gateway: one raw ASGI app in front of the legacy services and the new modules.

For every request::

    normalise the path (400 on tricks) → match a route (404) → decide the side
    (sticky bucket, or a signed force token) → forward to the legacy upstream, or call the
    module in process → count it, log one JSON line

``/health`` is answered here. The hot path is plain ASGI on purpose: Starlette's routing
and middleware stack cost more than the whole split decision (see bench/README.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.types import Receive, Scope, Send

from modules import DispatchResponse

from . import proxy_http, proxy_ws, ws_tunnel
from .accesslog import AccessLog
from .config import GatewayConfig, Route
from .control.window import Window
from .errors import JSON_CONTENT_TYPE, error_body
from .headers import (
    HOP_BY_HOP,
    REQUEST_ID,
    WS_HANDSHAKE,
    end_to_end,
    request_id,
)
from .http11 import RESPONSE_NOTES, ResponseNotes
from .metrics import Metrics
from .modules_host import ModuleHost
from .routing import BadPath, Router, normalise_path
from .shadow import MARKER as SHADOW_MARKER
from .shadow.mirror import Mirror, Tap
from .split import BUCKETS, Side, check_force_token, goes_new, sticky_key
from .upstream import UpstreamError, UpstreamPool

log = logging.getLogger("chatgw")

HEALTH_BODY = orjson.dumps({"status": "ok", "service": "chat-gateway"})
BACKEND_HEADER = b"x-gateway-backend"
ABNORMAL_WS_CLOSES = frozenset({1006, 1011})  # RFC 6455 §7.4.1: dropped, server error
RECORD_DELAY = 0.05  # seconds a request's bookkeeping may wait (see Gateway._done)
RECORD_BATCH = 512
_FORWARDED_PROTO = {"http": b"http", "https": b"https", "ws": b"http", "wss": b"https"}


@functools.lru_cache(maxsize=4096)
def _client_ip(host: object) -> bytes:
    return str(host).encode()


_BACKEND_LINES = {v: BACKEND_HEADER + b": " + v + b"\r\n" for v in (b"new", b"legacy")}


def _header_lines(extra: list[tuple[bytes, bytes]]) -> bytes:
    """The gateway's extra response headers as head lines (X-Request-Id, X-Gateway-Backend:
    the usual pair is joined without a loop)."""
    if len(extra) == 2 and extra[1][0] is BACKEND_HEADER:
        (name, rid), (_, side) = extra
        return name + b": " + rid + b"\r\n" + _BACKEND_LINES[side]
    return b"".join([k + b": " + v + b"\r\n" for k, v in extra])


def _bodiless(headers: list[tuple[bytes, bytes]]) -> bool:
    """No request body follows the head (RFC 9112 §6.3: neither Content-Length nor
    Transfer-Encoding, or a Content-Length of 0)."""
    for k, v in headers:
        if (k == b"content-length" and v != b"0") or k == b"transfer-encoding":
            return False
    return True


class _Request:
    """One HTTP request's decisions (:meth:`Gateway._prepare`), and what a request served
    without a task reports back (:class:`proxy_http.DirectOwner`)."""

    __slots__ = (
        "answer", "extra", "gateway", "headers", "method", "rid", "route", "scope", "side", "t0",
        "tap",
    )  # fmt: skip

    def __init__(self, gateway: Gateway, scope: Scope) -> None:
        self.t0 = time.perf_counter()
        self.gateway = gateway
        self.scope = scope
        self.method: str = scope["method"]
        self.route: Route | None = None
        self.side: Side = "legacy"
        self.answer: tuple[int, str] = (0, "")  # the gateway's own answer when no route
        self.rid = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.extra: list[tuple[bytes, bytes]] = []
        self.tap: Tap | None = None  # mirrored or recorded (Mirror.begin)

    def answered(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.tap is not None:
            self.tap.answered(status, headers, body)

    def done(self, status: int, n: int) -> None:
        """The answer is out (or the client gone): submit the shadow copy, if any (once the
        tap has seen an answer start), and count and log the request."""
        route = self.route
        assert route is not None
        gateway = self.gateway
        if self.tap is not None and self.tap.status:
            gateway.shadow.submit(self.tap, self.headers, status)
        gateway._done(self.rid, route.name, self.side, self.method, self.scope, status,
                      self.t0, n)  # fmt: skip

    def upstream_error(self, stage: str) -> None:
        route = self.route
        assert route is not None
        self.gateway.metrics.upstream_errors.labels(route.name, route.legacy, stage).inc()

    def resume(self, started: proxy_http.UpstreamResponse | UpstreamError | None) -> Any:
        """An ASGI app going on with the proxying from ``started`` (None: from the start)."""
        return functools.partial(self.gateway._serve, self, begun=started)


@dataclass(frozen=True)
class RouteTable:
    """One consistent view of config + compiled router + live weights (swapped whole)."""

    config: GatewayConfig
    router: Router
    weights: Mapping[str, int] = field(default_factory=dict)  # route name -> basis points

    # Request headers never forwarded under this config (see Gateway._forward_headers).
    forward_skip: frozenset[bytes] = field(init=False, compare=False)
    force_name: bytes = field(init=False, compare=False)  # the force header, lower-case

    def __post_init__(self) -> None:
        force = self.config.settings.force_header.encode()
        skip = HOP_BY_HOP | {
            force,
            REQUEST_ID,
            SHADOW_MARKER,
            b"x-forwarded-proto",
            b"x-forwarded-host",
        }
        object.__setattr__(self, "forward_skip", skip)
        object.__setattr__(self, "force_name", force)

    def basis(self, route: Route) -> int:
        return self.weights.get(route.name, route.new_basis)


class Gateway:
    """The ASGI app. ``await startup()`` / ``shutdown()`` run from its lifespan."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.env = os.environ if env is None else env
        self.table = RouteTable(config, Router(config.routes))
        self.metrics = metrics or Metrics()
        self.window = Window()  # last 60 s per (route, side): chatgw status and the guard
        self.access_log = access_log or AccessLog(config.settings.access_log)
        self.ops_secret = self.env.get("GATEWAY_OPS_SECRET") or None
        self.pools: dict[str, UpstreamPool] = {}
        self.modules = ModuleHost(GatewayDispatcher(self), self.env)
        self.ready = False
        #: The client listeners (gateway.server): /ready is 503 while one is not listening.
        self.client_sockets: list[socket.socket] = []
        self.started_hooks: list[Any] = []
        self.stopping_hooks: list[Any] = []
        self.control: Any = None  # the ControlPlane, when served (gateway.server.build)
        self.shadow = Mirror(self)  # shadow copies: queue and workers live in the lifespan
        self.started_hooks.append(self.shadow.start)
        self.stopping_hooks.append(self.shadow.stop)
        self.draining = False
        self._open_ws: set[_ClientSocket | ws_tunnel.WebSocketTunnel] = set()
        self._records: list[tuple[Any, ...]] = []  # see _done
        self._flush_armed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics.before_collect(self.flush_records)
        self.window.before_read = self.flush_records
        self._publish_weights()
        # The HTTP half of __call__, for a server that knows the scope type already
        # (gateway.http11 calls it directly: one coroutine layer less per request).
        self.asgi_http = self._http

    # ----------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ensure_pools(self.table.config)
        await self.modules.ensure(r.module for r in self.table.config.routes if r.module)
        for hook in self.started_hooks:
            await hook()
        self.ready = True

    def begin_drain(self) -> None:
        """SIGTERM: ``/ready`` answers 503 from now on, so load balancers stop sending."""
        self.draining = True
        self.ready = False

    async def close_websockets(self) -> int:
        """Close every open client WebSocket with 1001 (going away): clients reconnect to
        another replica. Relayed sockets close their upstream side with 1000."""
        sockets = list(self._open_ws)
        await asyncio.gather(*(s.going_away() for s in sockets), return_exceptions=True)
        return len(sockets)

    async def shutdown(self) -> None:
        self.ready = False
        for hook in self.stopping_hooks:
            await hook()
        await self.modules.stop()
        for pool in self.pools.values():
            await pool.aclose()
        self.pools.clear()
        self.flush_records()
        self.access_log.flush()

    def _ensure_pools(self, config: GatewayConfig) -> None:
        for name, up in config.upstreams.items():
            if name not in self.pools:
                self.pools[name] = UpstreamPool(
                    up.url,
                    connect_timeout=up.connect_timeout,
                    read_timeout=up.read_timeout,
                    max_connections=up.pool_size,
                )

    async def apply_config(self, config: GatewayConfig) -> None:
        """Switch to a validated config; modules it names are started first (all or none)."""
        await self.modules.ensure(r.module for r in config.routes if r.module)
        self._ensure_pools(config)
        known = {r.name for r in config.routes}
        weights = {k: v for k, v in self.table.weights.items() if k in known}
        self.table = RouteTable(config, Router(config.routes), weights)
        self.shadow.configure(config)
        self._publish_weights()

    def set_weight(self, route_name: str, basis: int) -> None:
        """Set a live override of a route's share (basis points, 0..10 000)."""
        if self.table.config.route(route_name) is None:
            from .errors import UnknownRouteError

            raise UnknownRouteError(route_name)
        self.set_weights({**self.table.weights, route_name: basis})

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Replace every live override at once (the control plane's snapshot, one swap)."""
        table = self.table
        known = {r.name for r in table.config.routes}
        clamped = {k: max(0, min(BUCKETS, v)) for k, v in weights.items() if k in known}
        self.table = RouteTable(table.config, table.router, clamped)
        self._publish_weights()

    def _publish_weights(self) -> None:
        for r in self.table.config.routes:
            self.metrics.new_percent.labels(r.name).set(self.table.basis(r) / 100)
        self.shadow.weights_changed()

    # ----------------------------------------------------------------- decision

    def decide(
        self,
        route: Route,
        headers: list[tuple[bytes, bytes]],
        query_string: bytes,
        params: dict[str, str],
        client: Any,
        *,
        websocket: bool = False,
        force: bytes | EllipsisType | None = ...,
    ) -> Side:
        """The side for this request; ``force``: the force header's value when the caller
        already has it from its own pass over the headers (``None``: absent)."""
        if force is ...:
            force = next((v for k, v in headers if k == self.table.force_name), None)
        if force is not None:
            side, reason = check_force_token(self.ops_secret, force.decode("latin-1"))
            if side is not None:
                return side if route.module else "legacy"
            self.metrics.force_rejected.labels(reason).inc()
        if route.module is None:
            return "legacy"
        basis = self.table.basis(route)
        if basis <= 0:
            return "legacy"
        if basis >= BUCKETS:
            return "new"
        key = sticky_key(route.sticky, headers, query_string, params, websocket=websocket)
        if key is None and route.sticky.kind != "none" and client:
            key = "client:" + str(client[0])
        return "new" if goes_new(basis, key) else "legacy"

    def _forward_headers(
        self, scope: Scope, rid: bytes, drop: frozenset[bytes]
    ) -> list[tuple[bytes, bytes]]:
        """End-to-end request headers plus X-Forwarded-* and X-Request-Id (see
        :meth:`_scan_headers`)."""
        out, _, _ = self._scan_headers(scope, drop)
        out.append((REQUEST_ID, rid))
        return out

    def _scan_headers(
        self, scope: Scope, drop: frozenset[bytes] = frozenset()
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bytes | None]:
        """One pass over the request headers: the headers to forward (without
        X-Request-Id), the client's X-Request-Id and the force header's value.

        Dropped: hop-by-hop headers and those named in ``Connection``, ``Content-Length``
        beside ``Transfer-Encoding`` (:func:`gateway.headers.end_to_end`'s rules), the
        client's X-Request-Id, X-Forwarded-Proto/-Host and force header, and the shadow
        marker: only the gateway's own copies carry it (no client can ask for a dry run
        or fake a copy). ``drop`` names more.
        """
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        table = self.table
        skip = table.forward_skip | drop if drop else table.forward_skip
        force_name = table.force_name
        client_rid = force = None
        general = False
        xff = b""
        host = b""
        out = []
        for k, v in raw:
            if k in skip:
                if k == REQUEST_ID:
                    client_rid = v if client_rid is None else client_rid
                elif k == force_name:
                    force = v if force is None else force
                elif k == b"connection" or k == b"transfer-encoding":
                    general = True
                continue
            if k == b"x-forwarded-for":
                xff = v
                continue
            if k == b"host":
                host = v
            out.append((k, v))
        if general:  # rare: Connection-named headers and framing, by the general rules
            e2e = end_to_end(raw, skip)
            xff = next((v for k, v in reversed(e2e) if k == b"x-forwarded-for"), b"")
            host = next((v for k, v in reversed(e2e) if k == b"host"), b"")
            out = [(k, v) for k, v in e2e if k != b"x-forwarded-for"]
        client = scope.get("client")
        ip = _client_ip(client[0]) if client else b"unknown"
        scheme = scope.get("scheme", "http")
        out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
        out.append((b"x-forwarded-proto", _FORWARDED_PROTO.get(scheme) or scheme.encode()))
        if host:
            out.append((b"x-forwarded-host", host))
        return out, client_rid, force

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _request_id(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        return request_id(next((v for k, v in headers if k == REQUEST_ID), None))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(self._prepare(scope), scope, receive, send)

    def http_start(self, cycle: Any, spawn: Any) -> Any:
        """Called by :mod:`gateway.http11` for each request before a task exists: the
        decisions are made here, and the usual proxied request is served from callbacks
        without a task (:class:`proxy_http.DirectForward`: no request body, an idle
        upstream connection); ``None`` then. Otherwise the ASGI app that goes on
        from these decisions in the request's task."""
        scope = cycle.scope
        try:
            req = self._prepare(scope)
            route = req.route
            if (
                route is not None
                and req.side == "legacy"
                and req.method != "HEAD"
                and _bodiless(scope["headers"])
            ):
                direct = proxy_http.DirectForward(cycle, req, spawn)
                pool = self.pools[route.legacy]
                target = proxy_http.request_target(scope)
                if pool.start(req.method, target, req.headers, direct, read_timeout=route.timeout):
                    cycle.lost = direct.client_gone
                    return None
        except Exception:
            # (outside a task nothing would answer the client) the whole way in a task: the
            # same failure there is uvicorn's 500
            return self._http
        if req.side == "new":  # (only a matched route has a side)
            return functools.partial(self._serve_module, req)
        return functools.partial(self._serve, req)

    def _prepare(self, scope: Scope) -> _Request:
        """Everything decided before the request is served: its id, the headers to pass
        on, and the route and side (or the gateway's own answer)."""
        req = _Request(self, scope)
        method = req.method
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        headers, client_rid, force = self._scan_headers(scope)
        rid = req.rid = request_id(client_rid)
        headers.append((REQUEST_ID, rid))
        req.headers = headers
        extra = req.extra = [(REQUEST_ID, rid)]
        if (raw == b"/health" or raw == b"/health/") and method in ("GET", "HEAD"):
            req.answer = (200, "")
            return req
        table = self.table
        try:
            segments = normalise_path(raw)
        except BadPath as exc:
            self.metrics.bad_requests.labels("bad_path").inc()
            req.answer = (400, f"path refused: {exc}")
            return req
        found = table.router.match(segments, method)
        if found is None:
            self.metrics.bad_requests.labels("no_route").inc()
            req.answer = (404, "no such route")
            return req
        route = req.route = found.route
        side = req.side = self.decide(
            route, scope["headers"], scope["query_string"], found.params, scope.get("client"),
            force=force,
        )  # fmt: skip
        if table.config.settings.backend_header:
            extra.append((BACKEND_HEADER, b"new" if side == "new" else b"legacy"))
        if route.shadow is not None or self.shadow.recording:
            req.tap = self.shadow.begin(route, side, scope)
        return req

    async def _serve(
        self,
        req: _Request,
        scope: Scope,
        receive: Receive,
        send: Send,
        begun: proxy_http.UpstreamResponse | UpstreamError | None = None,
    ) -> None:
        """Serve a prepared request (``begun``: see :func:`proxy_http.forward`)."""
        route = req.route
        if route is None:
            status, message = req.answer
            if status == 200:  # /health
                start, body = proxy_http.json_response_messages(200, HEALTH_BODY, req.extra)
                await send(start)
                await send(body)
                return
            n = await proxy_http.send_error(send, status, message, req.extra)
            self._done(req.rid, "-", "gateway", req.method, scope, status, req.t0, n)
            return
        if req.side == "new":
            await self._serve_module(req, scope, receive, send)
            return
        tap = req.tap
        if tap is not None:
            receive, send = tap.receive(receive), tap.send(send)
        status, n = await proxy_http.forward(
            scope, receive, send, self.pools[route.legacy], req.headers, req.extra,
            limit=route.body_limit, timeout=route.timeout, on_error=req.upstream_error,
            begun=begun,
        )  # fmt: skip
        req.done(status, n)  # (the copy submitted after the last body message went out)

    def _done(
        self,
        rid: bytes,
        route: str,
        backend: str,
        method: str,
        scope: Scope,
        status: int,
        t0: float,
        n: int,
        *,
        failed: bool = False,
    ) -> None:
        """Queue one request's bookkeeping (metrics, the guard's window, the access log);
        :meth:`flush_records` does it for a batch at a time. Done inline it was a third
        of what the gateway added to an in-process call (bench/README.md): the same work
        in a tight loop over a batch costs a fraction of it spread over requests. Every
        reader flushes first, so nothing reads stale figures. ``failed``: an abnormal
        WebSocket close, counted as an error for the guard (gateway.control.guard)."""
        records = self._records
        records.append((rid, route, backend, method, scope["path"], status, t0,
                        time.perf_counter(), n, failed))  # fmt: skip
        if len(records) >= RECORD_BATCH:
            self.flush_records()
        elif not self._flush_armed:
            self._flush_armed = True
            if self._loop is not None:
                self._loop.call_later(RECORD_DELAY, self.flush_records)
            else:  # no server loop (tests calling the app directly): at once
                self.flush_records()

    def flush_records(self) -> None:
        """Count and log every queued request now."""
        self._flush_armed = False
        records = self._records
        if not records:
            return
        self._records = []
        perf_now, wall_now, window_now = time.perf_counter(), time.time(), self.window.now()
        observe, record, write = self.metrics.observe, self.window.record, self.access_log.write
        for rid, route, backend, method, path, status, t0, t1, n, failed in records:
            seconds = t1 - t0
            age = perf_now - t1
            observe(route, backend, method, status, seconds)
            record(route, backend, 500 if failed else status, seconds, at=window_now - age)
            write(rid, route, backend, method, path, status, seconds, n, ts=wall_now - age)

    async def _serve_module(
        self, req: _Request, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Serve a prepared request on the new side: the module's app called in this task.
        :meth:`http_start` hands this coroutine to the server itself, so each resume of a
        module (a session GET's Redis read, say) passes through one gateway frame."""
        route = req.route
        assert route is not None and route.module is not None
        tap = req.tap
        if tap is not None:
            receive, send = tap.receive(receive), tap.send(send)
        extra = req.extra
        app, state = self.modules.get(route.module)
        limit = route.body_limit
        may_have_body = False
        for k, v in scope["headers"]:
            if k == b"content-length":
                if v.isdigit() and int(v) > limit:
                    n = await proxy_http.send_error(send, 413, "request body too large", extra)
                    req.done(413, n)
                    return
                may_have_body = v != b"0"
            elif k == b"transfer-encoding":
                may_have_body = True
        box = [0, 0, 0]  # status, bytes out, bytes in
        # Without Content-Length or Transfer-Encoding a request has no body (RFC 9112 §6.3):
        # nothing to count against the limit, so the module gets the server's receive.
        if may_have_body:
            server_receive = receive

            async def receive_limited() -> dict[str, Any]:
                msg = await server_receive()
                if msg["type"] == "http.request":
                    box[2] += len(msg.get("body", b""))
                    if box[2] > limit:
                        return {"type": "http.disconnect"}
                return msg  # type: ignore[return-value]

            receive = receive_limited

        # Served by gateway.http11 (and no shadow tap on send): the server adds ``extra``
        # to the response head and notes status and size, so ``send`` is not wrapped.
        notes: ResponseNotes | None = None
        if tap is None:
            notes = scope.get("extensions", {}).get(RESPONSE_NOTES)
        # ``own``: the extra headers a gateway answer below must carry itself
        own = extra
        if notes is not None:
            notes.extra_head, own = _header_lines(extra), []
            marked: Send = send
        else:

            async def send_marked(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    box[0] = msg["status"]
                    msg = {**msg, "headers": [*msg.get("headers", ()), *extra]}
                else:
                    box[1] += len(msg.get("body", b""))
                await send(msg)

            marked = send_marked  # type: ignore[assignment]

        inner = {**scope, "headers": req.headers, "state": state.copy()}
        try:
            await app(inner, receive, marked)
        except Exception:
            log.exception("module %s failed on %s %s", route.module, scope["method"], scope["path"])
            if notes is not None:
                box[0], box[1] = notes.status, notes.body_bytes
            if not box[0]:
                box[1] = await proxy_http.send_error(send, 500, "internal error", own)
            req.done(500, box[1])
            return
        if notes is not None:
            box[0], box[1] = notes.status, notes.body_bytes
        if box[2] > limit and not box[0]:
            n = await proxy_http.send_error(send, 413, "request body too large", own)
            req.done(413, n)
            return
        # (the shadow copy is submitted here, after the last body message went out)
        req.done(box[0], box[1])

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        rid = self._request_id(scope["headers"])
        table = self.table
        try:
            found = table.router.match(normalise_path(raw), "GET", websocket=True)
        except BadPath:
            found = None
        if found is None:
            body = error_body(404, "no such route")
            await proxy_ws._deny(scope, send, 404, body, JSON_CONTENT_TYPE)
            self._done(rid, "-", "gateway", "GET", scope, 404, t0, len(body))
            return
        route = found.route
        if self.draining:
            body = error_body(503, "the gateway is shutting down")
            await proxy_ws._deny(scope, send, 503, body, JSON_CONTENT_TYPE)
            self._done(rid, route.name, "gateway", "GET", scope, 503, t0, len(body))
            return
        side = self.decide(
            route,
            scope["headers"],
            scope["query_string"],
            found.params,
            scope.get("client"),
            websocket=True,
        )
        gauge = self.metrics.websockets_open.labels(route.name, side)
        gauge.inc()
        status = 101
        crashed = False
        sock = _ClientSocket(send, receive, upstream_code=None if side == "new" else 1000)
        self._open_ws.add(sock)
        receive, send = sock.receive, sock.send
        try:
            if side == "new":
                assert route.module is not None
                app, state = self.modules.get(route.module)
                headers = self._forward_headers(scope, rid, frozenset())
                try:
                    await app({**scope, "headers": headers, "state": state.copy()}, receive, send)
                except Exception:
                    crashed = True
                    raise
            else:
                up = table.config.upstreams[route.legacy]
                parts = urlsplit(up.url)
                ws_scheme = "wss" if parts.scheme == "https" else "ws"
                qs = scope["query_string"]
                target = raw.decode("latin-1") + ("?" + qs.decode("latin-1") if qs else "")
                url = f"{ws_scheme}://{parts.netloc}{parts.path}{target}"
                headers = self._forward_headers(scope, rid, WS_HANDSHAKE)
                status, _ = await proxy_ws.relay(
                    scope, receive, send, url, headers, connect_timeout=up.connect_timeout
                )
        finally:
            self._open_ws.discard(sock)
            gauge.dec()
            abnormal = crashed or sock.close_code in ABNORMAL_WS_CLOSES
            failed = abnormal and route.guard.ws_abnormal_closes
            self._done(rid, route.name, side, "GET", scope, status, t0, 0, failed=failed)

    def websocket_tunnel(
        self,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str | None,
    ) -> ws_tunnel.Plan | None:
        """How to splice this WebSocket upgrade to its legacy upstream (gateway.ws_tunnel),
        asked by gateway.http11 before uvicorn's WebSocket protocol takes the connection.
        None leaves it to :meth:`_websocket`: a path that does not route (its 404), the
        drain (its 503), the new side, an ``https://`` upstream (the frame relay)."""
        t0 = time.perf_counter()
        raw, _, qs = target.partition(b"?")
        table = self.table
        try:
            found = table.router.match(normalise_path(raw), "GET", websocket=True)
        except BadPath:
            return None
        if found is None or self.draining:
            return None
        route = found.route
        if self.decide(route, headers, qs, found.params, client, websocket=True) != "legacy":
            return None
        up = table.config.upstreams[route.legacy]
        like_scope = {"headers": headers, "client": client, "scheme": scheme or "http"}
        fwd, client_rid, _ = self._scan_headers(like_scope, ws_tunnel.DROP)
        rid = request_id(client_rid)
        plan = ws_tunnel.make_plan(up.url, target, fwd, rid, up.connect_timeout)
        if plan is None:
            return None
        gauge = self.metrics.websockets_open.labels(route.name, "legacy")
        name, guarded = route.name, route.guard.ws_abnormal_closes
        log_scope = {"path": ws_tunnel.log_path(raw)}

        def opened(tunnel: ws_tunnel.WebSocketTunnel) -> None:
            self._open_ws.add(tunnel)
            gauge.inc()

        def closed(tunnel: ws_tunnel.WebSocketTunnel, status: int, code: int | None) -> None:
            self._open_ws.discard(tunnel)
            gauge.dec()
            failed = guarded and code in ABNORMAL_WS_CLOSES
            self._done(rid, name, "legacy", "GET", log_scope, status, t0, 0, failed=failed)

        plan.opened, plan.closed = opened, closed
        return plan


class _ClientSocket:
    """One client WebSocket, as its handler (relay or module) sees it, that the gateway
    can close with 1001 when it drains.

    After the gateway's close, uvicorn hands the handler ``websocket.disconnect``; the
    handler's later sends are dropped (uvicorn refuses them after a close). A relay sees the
    disconnect with ``upstream_code`` so that it closes the legacy side normally.
    """

    __slots__ = (
        "_receive", "_send", "accepted", "close_code", "closed", "drained", "upstream_code",
    )  # fmt: skip

    def __init__(self, send: Send, receive: Receive, *, upstream_code: int | None) -> None:
        self._send = send
        self._receive = receive
        self.upstream_code = upstream_code
        self.accepted = False
        self.close_code: int | None = None
        self.closed = False
        self.drained = False

    async def send(self, msg: Any) -> None:
        if self.closed:
            return
        kind = msg["type"]
        if kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.close":
            self.closed = True
            self.close_code = msg.get("code", 1000)
        await self._send(msg)

    async def receive(self) -> Any:
        msg = await self._receive()
        if self.drained and self.upstream_code and msg["type"] == "websocket.disconnect":
            return {**msg, "code": self.upstream_code, "reason": "gateway shutting down"}
        return msg

    async def going_away(self) -> None:
        if self.closed or not self.accepted:
            return
        self.closed = self.drained = True
        msg = {"type": "websocket.close", "code": 1001, "reason": "gateway shutting down"}
        try:
            await self._send(msg)
        except (OSError, RuntimeError):  # the client went away meanwhile
            pass


class GatewayDispatcher:
    """Module-to-module calls that honour the split (the :class:`modules.Dispatcher`).

    ``modules/websocket`` asks the AI through here, so the ai route's percentage and the
    caller's cohort apply exactly as for a client's own request.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def request(
        self, method: str, path: str, *, headers: list[tuple[str, str]], body: bytes = b""
    ) -> DispatchResponse:
        gw = self.gateway
        raw_path, _, qs = path.partition("?")
        hdrs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        hdrs = [(k, v) for k, v in hdrs if k != b"content-length"]
        hdrs.append((b"content-length", str(len(body)).encode()))
        found = gw.table.router.match(normalise_path(raw_path.encode()), method)
        if found is None:
            return DispatchResponse(
                404,
                [("content-type", "application/json; charset=utf-8")],
                error_body(404, "no such route"),
            )
        route = found.route
        side = gw.decide(route, hdrs, qs.encode(), found.params, None)
        if side == "new":
            assert route.module is not None
            app, state = gw.modules.get(route.module)
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                "scheme": "http", "path": raw_path, "raw_path": raw_path.encode(),
                "query_string": qs.encode(), "root_path": "", "headers": hdrs,
                "client": None, "server": None, "state": state.copy(),
            }  # fmt: skip
            status = 500
            out_headers: list[tuple[str, str]] = []
            chunks: list[bytes] = []
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    await asyncio.Event().wait()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(msg: dict[str, Any]) -> None:
                nonlocal status, out_headers
                if msg["type"] == "http.response.start":
                    status = msg["status"]
                    out_headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in msg.get("headers", [])
                    ]
                elif msg["type"] == "http.response.body":
                    chunks.append(msg.get("body", b""))

            await app(scope, receive, send)  # type: ignore[arg-type]
            return DispatchResponse(status, out_headers, b"".join(chunks))
        pool = gw.pools[route.legacy]
        target = raw_path + ("?" + qs if qs else "")
        try:
            resp = await pool.request(method, target, hdrs, body, read_timeout=route.timeout)
            async with resp:
                data = await resp.read()
        except UpstreamError as exc:
            gw.metrics.upstream_errors.labels(route.name, route.legacy, exc.stage).inc()
            status, message = proxy_http.failure_status(exc)
            return DispatchResponse(
                status,
                [("content-type", "application/json; charset=utf-8")],
                error_body(status, message),
            )
        return DispatchResponse(
            resp.status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers], data
        )
