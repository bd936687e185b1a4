"""Keeps one gateway's live weights equal to the store's, and says when it cannot.

Two paths bring a new version in: the store's channel (``watch``, milliseconds after a
change on any replica) and a reconcile every ``reconcile_interval`` seconds that reads the
version and, if it differs from ours, the whole snapshot — it catches what the channel
lost (a reconnect, a dropped message) and makes a replica that was cut off converge.

A snapshot is applied in one assignment (:meth:`Gateway.set_weights` swaps
``gateway.table``), so a request sees all of a version or none of it. Versions are
compared with ``!=``, not ``>``: refreshes are serialised, so a read is never older than
the one before it, and a store that was emptied (version back to 0) is followed too.

When the store cannot be read the controller keeps the last snapshot it applied, sets
``degraded`` (``/ready`` shows it, ``gateway_control_store_up`` is 0) and keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from ..errors import StoreUnavailable
from .store import Snapshot, WeightStore

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("chatgw.control")


class Controller:
    def __init__(
        self, gateway: Gateway, store: WeightStore, *, reconcile_interval: float = 1.0
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.reconcile_interval = reconcile_interval
        self.snapshot = Snapshot()
        self.applied_at = 0.0
        self.degraded = False
        self.error = ""
        self.degraded_since: float | None = None
        self.listeners: list[Callable[[Snapshot], None]] = []
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        r = gateway.metrics.registry
        self._m_up = Gauge(
            "gateway_control_store_up", "1 when the weight store answers, 0 when degraded",
            registry=r,
        )  # fmt: skip
        self._m_version = Gauge(
            "gateway_control_version", "Version of the live weights applied here", registry=r
        )

    async def start(self) -> None:
        """Load the stored state before the gateway says ready, then follow it."""
        await self.refresh(force=True)
        self._tasks = [
            asyncio.create_task(self._watch(), name="chatgw-control-watch"),
            asyncio.create_task(self._reconcile(), name="chatgw-control-reconcile"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.store.close()

    # ----------------------------------------------------------------- state

    def _mark(self, error: StoreUnavailable | None) -> None:
        if error is None:
            if self.degraded:
                log.warning("weight store reachable again (%s)", self.store.where)
            self.degraded, self.error, self.degraded_since = False, "", None
            self._m_up.set(1)
            return
        if not self.degraded:
            log.error(
                "%s; keeping the last known weights (version %d)", error, self.snapshot.version
            )
            self.degraded_since = time.time()
        self.degraded, self.error = True, str(error)
        self._m_up.set(0)

    async def refresh(self, *, force: bool = False) -> bool:
        """Read the whole snapshot and apply it if its version differs; False if degraded."""
        async with self._lock:
            try:
                snap = await self.store.snapshot()
            except StoreUnavailable as exc:
                self._mark(exc)
                return False
            self._mark(None)
            if force or snap.version != self.snapshot.version:
                self.apply(snap)
            return True

    async def refresh_if_changed(self) -> bool:
        """Read only the version; read the snapshot only if it moved."""
        try:
            version = await self.store.version()
        except StoreUnavailable as exc:
            self._mark(exc)
            return False
        if version != self.snapshot.version or self.degraded:
            return await self.refresh()
        self._mark(None)
        return True

    def apply(self, snap: Snapshot) -> None:
        self.gateway.set_weights(snap.weights)
        self.snapshot = snap
        self.applied_at = time.time()
        self._m_version.set(snap.version)
        for listener in self.listeners:
            try:
                listener(snap)
            except Exception:
                log.exception("control listener failed on version %d", snap.version)

    def reapply(self) -> None:
        """Apply the current snapshot again (after a config reload changed the routes)."""
        self.apply(self.snapshot)

    # ----------------------------------------------------------------- loops

    async def _watch(self) -> None:
        while True:
            try:
                async for version in self.store.watch():
                    if version != self.snapshot.version:
                        await self.refresh()
            except StoreUnavailable as exc:
                self._mark(exc)
            except Exception:
                log.exception("control channel listener failed")
            await asyncio.sleep(min(1.0, self.reconcile_interval))

    async def _reconcile(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                await self.refresh_if_changed()
            except Exception:
                log.exception("reconcile failed")
