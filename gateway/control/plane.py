"""The control plane of one replica: every operation the API, the CLI, ramps and the guard
use, in one place.

::

    plane = ControlPlane(gateway, "routes.yaml", env=os.environ, replica="host:9000")
    await plane.start()                      # loads the stored weights before /ready is 200
    await plane.set_percent("sessions", 2500, who="alice", reason="canary", source="cli")
    await plane.rollback("sessions", who="guard", reason="5xx 7 % > 2 %", source="guard")
    plane.ramp_may_advance = guard.ok        # (route) -> bool | Awaitable[bool]

Weights are basis points (0..10 000, ``new_percent × 100``) inside; the API speaks
percentages. Each write is one store :class:`~.store.Change` (overrides, ramps and the
audit entries together), applied here at once and on the other replicas by their
controllers. "from" in the audit is the share this replica was applying when it wrote.

Rollback means 0 % new (everything back to legacy) as a live override, so it survives a
reload of a routes.yaml that still says otherwise; ``reset`` drops the override and the
route goes back to its routes.yaml share.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Route
from ..errors import ChangeRefused, UnknownRouteError
from .auth import TokenConfigError, Tokens
from .controller import Controller
from .ramp import RampRunner
from .reload import Reloader
from .store import AuditEntry, Change, WeightStore, store_from_env

if TYPE_CHECKING:
    from ..app import Gateway
    from .guard import Guard

log = logging.getLogger("chatgw.control")

# A bare bool, or (bool, reason) as the guard answers.
MayAdvance = Callable[[str], bool | tuple[bool, str] | Awaitable[bool]]


def _pct(basis: int | None) -> float | None:
    return None if basis is None else basis / 100


class ControlPlane:
    def __init__(
        self,
        gateway: Gateway,
        config_path: str,
        *,
        env: Mapping[str, str] | None = None,
        store: WeightStore | None = None,
        replica: str | None = None,
        reconcile_interval: float | None = None,
        reload_poll: float | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.gateway = gateway
        self.store = store or store_from_env(env)
        self.replica = replica or socket.gethostname()
        self.tokens_error = ""
        try:
            self.tokens = Tokens.from_env(env)
        except TokenConfigError as exc:
            log.error("control API disabled: %s", exc)
            self.tokens, self.tokens_error = Tokens(()), str(exc)
        interval = reconcile_interval or float(env.get("CHATGW_RECONCILE_SECONDS") or 1.0)
        self.controller = Controller(gateway, self.store, reconcile_interval=interval)
        self.ramps = RampRunner(self)
        poll = reload_poll or float(env.get("CHATGW_RELOAD_POLL_SECONDS") or 1.0)
        self.reloader = Reloader(self, config_path, poll=poll)
        #: The guard's veto on ramps: a ramp asks before every step and halts on False.
        self.ramp_may_advance: MayAdvance = lambda route: True
        self.guard: Guard | None = None  # set by gateway.server (auto-rollback, ramp veto)
        self._write = asyncio.Lock()

    async def start(self) -> None:
        await self.controller.start()
        await self.ramps.start()
        self.reloader.start()

    async def stop(self) -> None:
        self.reloader.stop()
        await self.ramps.stop()
        await self.controller.stop()

    # ----------------------------------------------------------------- reads

    @property
    def version(self) -> int:
        return self.controller.snapshot.version

    def store_view(self) -> dict[str, Any]:
        c = self.controller
        return {
            "kind": self.store.kind,
            "where": self.store.where,
            "reachable": not c.degraded,
            "error": c.error or None,
            "degraded_since": c.degraded_since,
        }

    def route_view(self, route: Route) -> dict[str, Any]:
        table = self.gateway.table
        snap = self.controller.snapshot
        ramp = snap.ramps.get(route.name)
        window = self.gateway.window
        return {
            "name": route.name,
            "match": route.match.pattern,
            "legacy": route.legacy,
            "module": route.module,
            "percent": table.basis(route) / 100 if route.module else 0.0,
            "default_percent": route.new_percent,
            "override_percent": _pct(snap.weights.get(route.name)),
            "ramp": ramp.view() if ramp else None,
            "window_seconds": window.seconds,
            "sides": {side: window.stats(route.name, side).as_dict() for side in ("legacy", "new")},
        }

    def status(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "version": self.version,
            "applied_at": self.controller.applied_at,
            "config": self.gateway.table.config.source,
            "store": self.store_view(),
            "routes": [self.route_view(r) for r in self.gateway.table.config.routes],
        }

    def route(self, name: str) -> Route:
        route = self.gateway.table.config.route(name)
        if route is None:
            raise UnknownRouteError(f"no route named {name!r}")
        return route

    def switchable(self, name: str) -> Route:
        route = self.route(name)
        if route.module is None:
            raise ChangeRefused(
                f"route {name!r} has no module: every request goes to legacy "
                f"({route.legacy}); give it a module in routes.yaml first"
            )
        return route

    async def audit(self, limit: int = 100, route: str | None = None) -> list[AuditEntry]:
        return await self.store.audit(limit, route)

    # ----------------------------------------------------------------- writes

    async def commit(self, change: Change) -> int:
        """Store ``change`` and apply it here before returning (the others follow)."""
        version = await self.store.commit(change)
        await self.controller.refresh()
        return version

    async def set_percent(
        self, name: str, basis: int, *, who: str, reason: str, source: str, action: str = "set"
    ) -> dict[str, Any]:
        """Set a route's live share. A manual change stops a ramp running on the route."""
        route = self.switchable(name)
        if not 0 <= basis <= 10_000:
            raise ChangeRefused(f"{basis / 100:g} is not between 0 and 100", 400)
        async with self._write:
            before = self.gateway.table.basis(route)
            ramps: dict[str, Any] = {}
            entries = [AuditEntry(who, source, action, name, before / 100, basis / 100, reason)]
            ramp = self.controller.snapshot.ramps.get(name)
            if ramp is not None and source != "ramp":
                ramps[name] = None
                entries.append(
                    AuditEntry(who, source, "ramp-stop", name, before / 100, basis / 100,
                               reason, detail=f"stopped by a manual {action}")
                )  # fmt: skip
            version = await self.commit(Change({name: basis}, ramps, entries))
        return {"route": name, "from": before / 100, "to": basis / 100, "version": version}

    async def rollback(
        self, name: str | None, *, who: str, reason: str, source: str
    ) -> dict[str, Any]:
        """Send a route (``name``) or every route with a module (None) back to legacy."""
        if name is not None:
            self.switchable(name)
        async with self._write:
            table = self.gateway.table
            snap = self.controller.snapshot
            routes = [r for r in table.config.routes if r.module and name in (None, r.name)]
            weights: dict[str, int | None] = {}
            ramps: dict[str, Any] = {}
            entries: list[AuditEntry] = []
            changed = []
            for r in routes:
                before = table.basis(r)
                if name is None and before == 0 and r.name not in snap.ramps:
                    continue
                weights[r.name] = 0
                if r.name in snap.ramps:
                    ramps[r.name] = None
                entries.append(
                    AuditEntry(who, source, "rollback", r.name, before / 100, 0.0, reason)
                )
                changed.append({"route": r.name, "from": before / 100, "to": 0.0})
            version = self.version
            if entries:
                version = await self.commit(Change(weights, ramps, entries))
        return {"changed": changed, "version": version}

    async def reset(self, name: str, *, who: str, reason: str, source: str) -> dict[str, Any]:
        """Drop a route's live override: it goes back to its routes.yaml share."""
        route = self.switchable(name)
        async with self._write:
            before = self.gateway.table.basis(route)
            entry = AuditEntry(who, source, "reset", name, before / 100, route.new_percent, reason)
            version = await self.commit(Change({name: None}, {}, [entry]))
        return {"route": name, "from": before / 100, "to": route.new_percent, "version": version}

    async def may_advance(self, route: str) -> tuple[bool, str]:
        """Ask :attr:`ramp_may_advance`; an error in the hook counts as "no"."""
        try:
            answer = self.ramp_may_advance(route)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            log.exception("ramp_may_advance(%r) failed", route)
            return False, f"ramp_may_advance failed: {type(exc).__name__}: {exc}"
        if isinstance(answer, tuple):
            ok, why = answer
            return bool(ok), "" if ok else why or "ramp_may_advance said no"
        return bool(answer), "" if answer else "ramp_may_advance said no"
