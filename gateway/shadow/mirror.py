"""Mirror a share of a route's requests to the other side of the split, off the hot path.

A shadowed route (``shadow:`` in routes.yaml, :mod:`gateway.config`)::

    - name: session-item
      match: {path: "/api/sessions/{sessionId}"}
      legacy: chat-session
      module: session
      new_percent: 0
      shadow: {percent: 100, methods: [GET], compare: {normalise: [timestamp]}}

How a copy travels:

1. ``Gateway._http`` asks :meth:`Mirror.begin` (only when the route has ``shadow``: a
   route without one pays one attribute check). A :class:`Tap` wraps ``receive`` and
   ``send``: it keeps the request body and the primary answer up to ``max_body`` (beyond
   that it stops keeping and the copy is counted ``too_large``, never silently skipped).
2. After the primary answer's last message went out, :meth:`Mirror.submit` puts the job
   on a bounded queue (``settings.shadow.queue``); a full queue drops it (``dropped``).
   The client never waits on anything that follows.
3. ``settings.shadow.workers`` tasks call the other side — the module in process with a
   fresh receive/send, or the legacy upstream through the mirror's *own* pools — within
   ``settings.shadow.timeout``; with ``compare.noise`` a safe request is also sent once
   more to the primary side. :func:`.compare.compare` decides; :mod:`.results` counts.
   With ``settings.shadow.isolation: process`` step 3 happens in a child process at lower
   CPU priority (:mod:`.process`): ``submit`` hands the copy over a pipe, the outcomes come
   back to the same :mod:`.results`.

The marker header ``x-gateway-shadow`` (skipper's ``tee`` loop detection):

* every copy carries it: ``1``, or ``dry-run`` for an unsafe method on a route with
  ``dry_run: true``; a module that sees ``dry-run`` runs the request without touching
  production state (session: a throw-away key namespace; admin: a rolled-back
  transaction; websocket: nothing delivered or stored);
* the gateway strips it from every client request (``Gateway._forward_headers``), so no
  client can ask for a dry run or fake a copy;
* a request that arrives carrying it anyway (another gateway's copy: a loop) is answered
  normally but never mirrored again (``gateway_shadow_loops_refused_total``).

Writes are never duplicated: unsafe methods are mirrored only with ``dry_run: true``, and
only towards the module (the legacy services do not know the marker, so while the module
is primary an unsafe request is never mirrored to legacy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from starlette.types import Message, Receive, Scope, Send

from ..config import SAFE_METHODS, GatewayConfig, Route, Shadow
from ..headers import end_to_end
from ..proxy_http import request_target
from ..split import BUCKETS
from ..upstream import UpstreamPool
from . import MARKER
from .compare import Exchange, compare
from .process import ShadowProcess
from .record import Recorder
from .results import ShadowResults, redact_body, redact_differences, redact_headers, redact_query

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("chatgw.shadow")


class _TooLarge(Exception):
    pass


def _text_headers(raw: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in raw]


class Tap:
    """The request body and the primary answer of one mirrored request, kept up to a bound."""

    __slots__ = (
        "body", "headers", "job", "limit", "mirror", "over", "primary", "record", "resp_body",
        "resp_raw", "resp_size", "route", "scope", "size", "status",
    )  # fmt: skip

    def __init__(
        self, route: Route, primary: str, scope: Scope, limit: int, *, mirror: bool, record: bool
    ) -> None:
        self.route = route
        self.primary = primary
        self.scope = scope
        self.limit = limit
        self.mirror = mirror
        self.record = record
        self.body: list[bytes] = []
        self.size = 0
        self.over = False
        self.status = 0
        # the primary answer's headers as they went out: decoded (resp_headers) only by
        # the copy's worker, off the request's path
        self.resp_raw: list[tuple[bytes, bytes]] = []
        self.resp_body: list[bytes] = []
        self.resp_size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.job = 0  # the copy's number in the worker process (isolation: process)

    def receive(self, receive: Receive) -> Receive:
        async def tapped() -> Message:
            msg = await receive()
            if msg["type"] == "http.request" and not self.over:
                chunk = msg.get("body", b"")
                self.size += len(chunk)
                if self.size > self.limit:
                    self.over = True
                    self.body.clear()
                elif chunk:
                    self.body.append(chunk)
            return msg

        return tapped

    def send(self, send: Send) -> Send:
        async def tapped(msg: Message) -> None:
            await send(msg)
            kind = msg["type"]
            if kind == "http.response.start":
                self.status = msg["status"]
                self.resp_raw = list(msg.get("headers", ()))
            elif kind == "http.response.body" and not self.over:
                self._keep(msg.get("body", b""))

        return tapped

    def answered(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The primary answer of a request served without ``send`` (``proxy_http.DirectForward``):
        what :meth:`send`'s wrapper keeps of a start and one last body message."""
        self.status = status
        self.resp_raw = headers
        if not self.over:
            self._keep(body)

    @property
    def resp_headers(self) -> list[tuple[str, str]]:
        """The primary answer's headers, names lower-cased, as text."""
        return _text_headers(self.resp_raw)

    def _keep(self, chunk: bytes) -> None:
        self.resp_size += len(chunk)
        if self.resp_size > self.limit:
            self.over = True
            self.resp_body.clear()
        elif chunk:
            self.resp_body.append(chunk)

    @property
    def target(self) -> bytes:
        return request_target(self.scope)

    def primary_exchange(self) -> Exchange:
        return Exchange(self.status, self.resp_headers, b"".join(self.resp_body))


class Mirror:
    """The shadow machinery of one gateway: queue, workers, own pools, results, recorder."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.table.config.settings
        self.results = ShadowResults(gateway.metrics.registry, samples=settings.shadow.samples)
        self.loops = Counter(
            "gateway_shadow_loops_refused",
            "Requests that arrived carrying x-gateway-shadow and were not mirrored again",
            ["route"],
            registry=gateway.metrics.registry,
        )
        self.queue: asyncio.Queue[Tap] | None = None
        self.workers: list[asyncio.Task[None]] = []
        self.pools: dict[str, UpstreamPool] = {}
        self.recorder = Recorder()
        self.recording = False
        self.worker: ShadowProcess | None = None  # isolation: process (set at start)
        self.isolated = False
        # Called with the tap once a worker task is through with it: the worker
        # process reports each copy to the gateway this way (.worker).
        self.on_done: Callable[[Tap], None] | None = None
        self.copies = 0  # shadow calls made (the benchmark accounts for them apart)
        self.configure(gateway.table.config)

    # ----------------------------------------------------------------- lifecycle

    def configure(self, config: GatewayConfig) -> None:
        """A new config: record settings and sample store size (queue size and isolation:
        next start)."""
        self.recorder.configure(config.settings.record)
        self.recording = config.settings.record is not None
        self.results.resize(config.settings.shadow.samples)
        if (worker := self.live_worker) is not None:
            worker.configure(config)
        wanted, running = config.settings.shadow.isolation, self.isolation
        if self.queue is not None and wanted != running:
            log.warning(
                "settings.shadow.isolation is now %s, but the copies keep running in %s "
                "isolation until the gateway restarts",
                wanted, running,
            )  # fmt: skip

    @property
    def isolation(self) -> str:
        """Where the copies run now (the setting takes effect at start)."""
        return "process" if self.isolated else "loop"

    @property
    def live_worker(self) -> ShadowProcess | None:
        """The worker process while copies go to it (kept between starts: its metrics)."""
        return self.worker if self.isolated else None

    def weights_changed(self) -> None:
        """The live split changed: the worker process's module-to-module calls follow it."""
        if (worker := self.live_worker) is not None:
            worker.send_weights()

    async def start(self) -> None:
        """Queue and workers; with ``isolation: process`` the worker process too (isolation
        and queue size are read here: a change takes effect at the next start)."""
        settings = self.gateway.table.config.settings.shadow
        if settings.isolation == "process":
            if self.worker is None:
                self.worker = ShadowProcess(self)
            await self.worker.start()
            self.isolated = True
        self.queue = asyncio.Queue(settings.queue)
        self.workers = [
            asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(settings.workers)
        ]

    async def stop(self) -> None:
        self.queue = None
        if (worker := self.live_worker) is not None:
            await worker.stop()
            self.isolated = False
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.workers = []
        for pool in self.pools.values():
            await pool.aclose()
        self.pools.clear()
        self.recorder.close()

    def _pool(self, name: str) -> UpstreamPool:
        pool = self.pools.get(name)
        if pool is None:
            up = self.gateway.table.config.upstreams[name]
            settings = self.gateway.table.config.settings.shadow
            pool = self.pools[name] = UpstreamPool(
                up.url,
                connect_timeout=min(up.connect_timeout, settings.timeout),
                read_timeout=settings.timeout,
                max_connections=settings.workers,
            )
        return pool

    # ----------------------------------------------------------------- hot path

    def begin(self, route: Route, side: str, scope: Scope) -> Tap | None:
        """A :class:`Tap` when this request is mirrored or recorded, else None."""
        if self.queue is None:
            return None
        sh = route.shadow
        method: str = scope["method"]
        mirror = sh is not None and self._mirrors(sh, route, side, method, scope)
        record = self.recording and self.recorder.sampled()
        if not mirror and not record:
            return None
        limit = sh.max_body if sh is not None else self.recorder.max_body
        return Tap(route, side, scope, limit, mirror=mirror, record=record)

    def _mirrors(self, sh: Shadow, route: Route, side: str, method: str, scope: Scope) -> bool:
        if method not in sh.methods:
            return False
        if side == "new" and method not in SAFE_METHODS:
            return False  # legacy does not honour dry-run: never mirror a write to it
        if sh.basis < BUCKETS and random.random() * BUCKETS >= sh.basis:
            return False
        for k, _ in scope["headers"]:
            if k == MARKER:
                self.loops.labels(route.name).inc()
                return False
        return True

    def submit(self, tap: Tap, headers: list[tuple[bytes, bytes]], status: int) -> None:
        """Called once the primary answer is out: queue the copy (never waits)."""
        if status == 499 or self.queue is None:
            return  # the client went away: there is no whole answer to compare with
        if tap.over:
            if tap.mirror:
                self.results.count(tap.route.name, "too_large")
            return
        tap.headers = headers
        if self.isolated and not tap.record:
            self._to_worker(tap)  # straight over the pipe: no task switch on this loop
            return
        try:
            self.queue.put_nowait(tap)
        except asyncio.QueueFull:
            if tap.mirror:
                self.results.count(tap.route.name, "dropped")

    # ----------------------------------------------------------------- workers

    async def _work(self) -> None:
        while True:
            queue = self.queue
            if queue is None:
                return
            tap = await queue.get()
            try:
                await self._handle(tap)
            except Exception:
                log.exception("shadow copy failed on route %s", tap.route.name)
                if tap.mirror:  # (a recording failure too: the copy was never made)
                    self.results.count(tap.route.name, "error")
            finally:
                queue.task_done()
                if self.on_done is not None:
                    self.on_done(tap)

    async def _handle(self, tap: Tap) -> None:
        if tap.record:
            self.recorder.write(tap)
        if not tap.mirror:
            return
        if self.isolated:
            self._to_worker(tap)
            return
        route = tap.route
        sh = route.shadow
        assert sh is not None
        method: str = tap.scope["method"]
        other = "legacy" if tap.primary == "new" else "new"
        marker = b"1"
        if method not in SAFE_METHODS:
            marker = b"dry-run"
        if marker == b"dry-run" and tap.primary == "legacy":
            assert route.module is not None
            app, _ = self.gateway.modules.get(route.module)
            if not getattr(app, "shadow_dry_run", False):
                # The module does not honour the marker: sending it the write would write
                # twice. Counted as an error; the route should not opt in to dry_run yet.
                log.warning("module %s does not support dry-run: copy refused", route.module)
                self.results.count(route.name, "error")
                return
        timeout = self.gateway.table.config.settings.shadow.timeout
        noise: Exchange | None = None
        try:
            async with asyncio.timeout(timeout):
                shadow = await self.call(other, tap, marker)
                if sh.compare.noise and method in SAFE_METHODS:
                    noise = await self.call(tap.primary, tap, b"1")
        except Exception as exc:  # timeout, upstream failure, module crash: all count
            if isinstance(exc, _TooLarge):
                self.results.count(route.name, "too_large")
            else:
                log.debug("shadow copy on %s failed: %r", route.name, exc)
                self.results.count(route.name, "error")
            return
        primary = tap.primary_exchange()
        result = compare(primary, shadow, sh.compare, noise)
        if result.match:
            self.results.count(route.name, "match")
            return
        self.results.count(route.name, "mismatch")
        fields = sh.compare.redact
        self.results.add_sample(
            {
                "route": route.name,
                "at": time.time(),
                "method": method,
                "target": redact_query(tap.target.decode("latin-1")),
                "primary_side": tap.primary,
                "request": {
                    "headers": redact_headers(_text_headers(tap.headers)),
                    "body": redact_body(b"".join(tap.body), fields),
                },
                "primary": {"status": primary.status, "body": redact_body(primary.body, fields)},
                "shadow": {"status": shadow.status, "body": redact_body(shadow.body, fields)},
                "differences": redact_differences(
                    [d.as_dict() for d in result.differences], fields
                ),
                "noisy": result.noisy,
            }
        )

    def _to_worker(self, tap: Tap) -> None:
        worker = self.live_worker
        assert worker is not None
        if not worker.send(tap):
            self.results.count(tap.route.name, "dropped")

    def _copy_headers(self, tap: Tap, marker: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
        out = [(k, v) for k, v in end_to_end(tap.headers) if k not in (b"content-length", MARKER)]
        if body or tap.scope["method"] not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            out.append((b"content-length", str(len(body)).encode()))
        out.append((MARKER, marker))
        return out

    async def call(self, side: str, tap: Tap, marker: bytes) -> Exchange:
        """One copy of the request to ``side``; the answer up to ``max_body``."""
        self.copies += 1
        body = b"".join(tap.body)
        headers = self._copy_headers(tap, marker, body)
        route = tap.route
        limit = tap.limit
        if side == "legacy":
            pool = self._pool(route.legacy)
            resp = await pool.request(tap.scope["method"], tap.target, headers, body)
            async with resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp:
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge
                    chunks.append(chunk)
            out = [(k.lower().decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
            return Exchange(resp.status, out, b"".join(chunks))
        assert route.module is not None
        app, state = self.gateway.modules.get(route.module)
        scope = {**tap.scope, "headers": headers, "state": state.copy()}
        box: dict[str, Any] = {"status": 500, "headers": [], "body": [], "size": 0}
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # never a disconnect: SSE would stop early
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                box["status"] = msg["status"]
                box["headers"] = _text_headers(msg.get("headers", ()))
            elif msg["type"] == "http.response.body":
                chunk = msg.get("body", b"")
                box["size"] += len(chunk)
                if box["size"] > limit:
                    raise _TooLarge
                box["body"].append(chunk)

        await app(scope, receive, send)
        return Exchange(box["status"], box["headers"], b"".join(box["body"]))
