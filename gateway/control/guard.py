"""The guard: a route whose new side misbehaves goes back to legacy on its own.

Every replica runs a checker every ``CHATGW_GUARD_INTERVAL`` seconds (0.5 by default) that
reads its in-memory :class:`~.window.Window` (no per-request work beyond ``record``) and,
for each route with a module and a share above 0 %, judges the new side over the route's
window: the 5xx share (module exceptions answer 500, abnormal WebSocket closes — 1006,
1011 or a module crash — count as errors) and the p95 latency (not on WebSocket routes,
where the "latency" is the length of a session), once at least ``min_requests`` came in.
The migration guide's targets are the defaults: error rate < 0.1 %, p95 < 100 ms. ::

    defaults:
      guard: {error_rate: 0.1%, p95: 100ms, min_requests: 20, window: 30s,
              ws_abnormal_closes: true, enabled: true}
    routes:
      - name: ai-chat-stream
        guard: {p95: 30s}             # a streamed answer takes as long as the provider
      - name: admin
        guard: {enabled: false}

On a breach the route is rolled back (``plane.rollback(..., source="guard")``): the audit
entry's reason holds the figures, ``gateway_guard_rollbacks_total{route}`` counts it, a
warning is logged and, when ``GATEWAY_GUARD_WEBHOOK`` is set, the figures are POSTed there
(fire-and-forget, 2 s timeout, no secrets in the body). Before committing, the replica
re-reads the store: if another replica already took the route to 0 %, it does nothing, so
a fleet breaching together writes one entry (two replicas committing within the same
store round trip can still both write one; the end state is the same). A route is judged
only on traffic since it last left 0 %, so turning it back on starts a clean slate.

``CHATGW_GUARD=off`` turns it off on a replica. If the store is unreachable the route is sent to legacy on this replica at once and the
commit is retried on every tick until it lands.

Ramps: :meth:`Guard.ok` is the plane's ``ramp_may_advance`` hook; a ramp halts at the
first red verdict (and a rollback of the route ends it anyway). Shadowing may feed
``mismatch_rate(route)`` (a share 0..1 or None); it is judged only when the route sets
``guard.mismatch_rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import Counter

from ..config import Guard as GuardConfig
from ..config import Route, parse_duration
from ..errors import ChangeRefused, StoreUnavailable, UnknownRouteError
from .store import redact
from .window import Stats

if TYPE_CHECKING:
    from ..app import Gateway
    from .plane import ControlPlane

log = logging.getLogger("chatgw.control.guard")

ABNORMAL_WS_CLOSES = frozenset({1006, 1011})
GUARD_KEYS = ("enabled", "error_rate", "p95", "min_requests", "window", "ws_abnormal_closes",
              "mismatch_rate")  # fmt: skip
MAX_WINDOW = 60.0  # the live window keeps 60 s
OFF = frozenset({"off", "0", "false", "no"})


# --------------------------------------------------------------------------- config


def _share(value: Any) -> float | None:
    """``0.1%`` or ``0.1`` (both mean 0.1 %) as a fraction 0..1, or None if invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    text = str(value).strip().removesuffix("%").strip()
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0 or d > 100:
        return None
    return float(d) / 100


def parse_guard(doc: Any, raw: Any, path: str, base: GuardConfig) -> GuardConfig:
    """``guard:`` of a route or of ``defaults`` over ``base``; problems go to ``doc``."""
    from ..config import _check_keys

    if not isinstance(raw, dict):
        doc.issue(path, "must be a mapping like {error_rate: 0.1%, p95: 100ms}")
        return base
    _check_keys(doc, raw, path, GUARD_KEYS)
    kw: dict[str, Any] = {}
    for key in ("enabled", "ws_abnormal_closes"):
        if key in raw:
            if isinstance(raw[key], bool):
                kw[key] = raw[key]
            else:
                doc.issue(f"{path}.{key}", f"{raw[key]!r} must be true or false")
    for key in ("error_rate", "mismatch_rate"):
        if key in raw:
            share = _share(raw[key])
            if share is None:
                doc.issue(f"{path}.{key}", f"{raw[key]!r} is not a percentage like 0.1% (0..100)")
            else:
                kw[key] = share
    if "p95" in raw:
        p95 = parse_duration(raw["p95"])
        if p95 is None:
            doc.issue(f"{path}.p95", f"{raw['p95']!r} is not a duration like 100ms or 2s")
        else:
            kw["p95"] = p95
    if "window" in raw:
        w = parse_duration(raw["window"])
        if w is None or not 1 <= w <= MAX_WINDOW:
            doc.issue(f"{path}.window", f"{raw['window']!r} is not a duration from 1s to 60s")
        else:
            kw["window"] = w
    if "min_requests" in raw:
        n = raw["min_requests"]
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1_000_000:
            kw["min_requests"] = n
        else:
            doc.issue(f"{path}.min_requests", f"{n!r} is not a whole number of at least 1")
    return replace(base, **kw)


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """``ok`` False is a breach; ``judged`` False when there was too little traffic."""

    ok: bool
    judged: bool
    reason: str
    figures: Mapping[str, Any]


def _pct(x: float) -> str:
    return f"{x * 100:.3g} %"


def evaluate(
    cfg: GuardConfig, stats: Stats, *, websocket: bool = False, mismatch: float | None = None
) -> Verdict:
    """Judge one route's new side (pure): every threshold crossed is named in ``reason``.

    >>> evaluate(GuardConfig(), Stats(requests=100, errors=1, seconds=30, p95=0.02)).reason
    'error rate 1 % > 0.1 % (1 of 100 requests in 30 s)'
    """
    figures: dict[str, Any] = {
        **stats.as_dict(),
        "window_seconds": stats.seconds,
        "min_requests": cfg.min_requests,
        "max_error_rate": cfg.error_rate,
        "max_p95_ms": None if websocket else round(cfg.p95 * 1000, 2),
    }
    if mismatch is not None:
        figures["mismatch_rate"] = round(mismatch, 5)
    if not cfg.enabled:
        return Verdict(True, False, "guard disabled", figures)
    if stats.requests < cfg.min_requests:
        why = f"{stats.requests} of {cfg.min_requests} requests needed in {stats.seconds} s"
        return Verdict(True, False, why, figures)
    breaches = []
    if stats.error_rate > cfg.error_rate:
        breaches.append(
            f"error rate {_pct(stats.error_rate)} > {_pct(cfg.error_rate)} "
            f"({stats.errors} of {stats.requests} requests in {stats.seconds} s)"
        )
    if not websocket and stats.p95 is not None and stats.p95 > cfg.p95:
        breaches.append(f"p95 {stats.p95 * 1000:g} ms > {cfg.p95 * 1000:g} ms")
    if cfg.mismatch_rate is not None and mismatch is not None and mismatch > cfg.mismatch_rate:
        breaches.append(f"shadow mismatch {_pct(mismatch)} > {_pct(cfg.mismatch_rate)}")
    if breaches:
        return Verdict(False, True, "; ".join(breaches), figures)
    return Verdict(True, True, "green", figures)


# --------------------------------------------------------------------------- the checker


class Guard:
    """One replica's guard. ``start()`` after the plane, ``stop()`` before it."""

    def __init__(
        self,
        plane: ControlPlane,
        *,
        env: Mapping[str, str] | None = None,
        interval: float | None = None,
        mismatch_rate: Callable[[str], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self.plane = plane
        self.gateway: Gateway = plane.gateway
        self.interval = interval or float(env.get("CHATGW_GUARD_INTERVAL") or 0.5)
        self.webhook = env.get("GATEWAY_GUARD_WEBHOOK") or None
        #: ``CHATGW_GUARD=off`` turns the whole guard off on this replica (test harnesses
        #: that provoke 5xx on purpose); routes.yaml's ``enabled: false`` is per route.
        self.enabled = (env.get("CHATGW_GUARD") or "on").strip().lower() not in OFF
        #: Optional input from shadowing: the route's mismatch share (0..1) or None.
        self.mismatch_rate = mismatch_rate
        self._clock = clock
        self._since: dict[str, float] = {}  # route -> when it was last seen at 0 %
        self._pending: dict[str, Verdict] = {}  # rolled back here, not yet in the store
        self.last: dict[str, Verdict] = {}
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._m_rollbacks = Counter(
            "gateway_guard_rollbacks", "Routes sent back to legacy by this replica's guard",
            ["route"], registry=self.gateway.metrics.registry,
        )  # fmt: skip

    async def start(self) -> None:
        if not self.enabled:
            log.warning("guard off on this replica (CHATGW_GUARD=off): no automatic rollback")
            return
        if self.webhook:
            # Made here, not at the breach: building its TLS context blocks for ~1 s.
            self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)
        self._task = asyncio.create_task(self._run(), name="chatgw-guard")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._posts) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ----------------------------------------------------------------- judging

    def _stats(self, route: Route) -> Stats:
        """The new side since the route last left 0 %, at most its window."""
        span = route.guard.window
        since = self._since.get(route.name)
        if since is not None:
            span = min(span, self._clock() - since)
        seconds = max(1, min(int(MAX_WINDOW), math.ceil(span)))
        return self.gateway.window.stats(route.name, "new", seconds)

    def verdict(self, route: Route) -> Verdict:
        mismatch = None
        if self.mismatch_rate is not None and route.guard.mismatch_rate is not None:
            try:
                mismatch = self.mismatch_rate(route.name)
            except Exception:
                log.exception("mismatch_rate(%r) failed", route.name)
        return evaluate(
            route.guard, self._stats(route), websocket=route.match.websocket, mismatch=mismatch
        )

    def ok(self, name: str) -> tuple[bool, str]:
        """The ramp hook: may ``name`` go one step further? (False with the reason.)"""
        try:
            route = self.plane.route(name)
        except UnknownRouteError as exc:
            return False, str(exc)
        if not self.enabled:
            return True, ""
        v = self.verdict(route)
        return v.ok, "" if v.ok else f"guard: {v.reason}"

    def view(self) -> dict[str, Any]:
        """Per route: state (green, red, idle, off), reason and figures (for the dashboard)."""
        out: dict[str, Any] = {}
        table = self.gateway.table
        for r in table.config.routes:
            if not r.module:
                continue
            v = self.verdict(r)
            state = "off" if not (self.enabled and r.guard.enabled) else "idle" if not v.judged else (
                "green" if v.ok else "red")  # fmt: skip
            out[r.name] = {"state": state, "reason": v.reason, "figures": dict(v.figures)}
        return out

    # ----------------------------------------------------------------- acting

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("guard check failed")
            await asyncio.sleep(self.interval)

    async def check(self) -> list[str]:
        """One pass over every route; returns the routes rolled back by this replica."""
        if not self.enabled:
            return []
        for name in list(self._pending):
            await self._commit(name, self._pending[name])
        done = []
        table = self.gateway.table
        for route in table.config.routes:
            if route.module is None or not route.guard.enabled:
                continue
            if table.basis(route) == 0:
                self._since[route.name] = self._clock()
                continue
            v = self.verdict(route)
            self.last[route.name] = v
            if not v.ok and await self._rollback(route, v):
                done.append(route.name)
        return done

    async def _rollback(self, route: Route, v: Verdict) -> bool:
        plane = self.plane
        await plane.controller.refresh()  # another replica may have done it already
        if self.gateway.table.basis(route) == 0:
            self._since[route.name] = self._clock()
            return False
        log.warning(
            "guard: route %s new side breached on %s: %s; rolling back to 0 %% new (%s)",
            route.name, plane.replica, v.reason, _figures_text(v.figures),
        )  # fmt: skip
        self._m_rollbacks.labels(route.name).inc()
        self._since[route.name] = self._clock()
        if not await self._commit(route.name, v):
            # Cut off from the store: legacy here and now; the commit is retried.
            self.gateway.set_weight(route.name, 0)
        self._notify(route.name, v)
        return True

    async def _commit(self, name: str, v: Verdict) -> bool:
        reason = f"guard: {v.reason} [{_figures_text(v.figures)}]"
        try:
            await self.plane.rollback(name, who="guard", reason=reason, source="guard")
        except StoreUnavailable as exc:
            if name not in self._pending:
                log.error("guard: rollback of %s not stored (%s); retrying", name, exc)
            self._pending[name] = v
            return False
        except ChangeRefused as exc:  # the route lost its module in a reload meanwhile
            log.warning("guard: rollback of %s refused: %s", name, exc)
        self._pending.pop(name, None)
        return True

    def _notify(self, route: str, v: Verdict) -> None:
        if not self.webhook or self._client is None:
            return
        body = {
            "event": "guard.rollback",
            "route": route,
            "replica": self.plane.replica,
            "reason": v.reason,
            "figures": dict(v.figures),
            "ts": time.time(),
        }
        post = self._post(self._client, self.webhook, body)
        task = asyncio.create_task(post, name="chatgw-guard-webhook")
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    @staticmethod
    async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        try:
            resp = await client.post(url, json=body)
            if resp.status_code >= 400:
                log.warning("guard webhook %s answered %d", redact(url), resp.status_code)
        except httpx.HTTPError as exc:
            log.warning("guard webhook %s failed: %s", redact(url), type(exc).__name__)


def _figures_text(figures: Mapping[str, Any]) -> str:
    keys = ("requests", "errors", "error_rate", "p95_ms", "window_seconds", "mismatch_rate")
    return " ".join(f"{k}={figures[k]}" for k in keys if k in figures)
