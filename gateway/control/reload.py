"""Hot reload of routes.yaml: all or nothing, and the last good config keeps serving.

Three triggers: the file changes (its mtime, size or inode, polled every second — no
inotify dependency, and it sees a ConfigMap's symlink swap), ``SIGHUP``, and
``POST /api/reload``. A reload validates the file with :func:`gateway.config.load_config`
(every problem, with file and line), starts the modules it names, then switches the
gateway's table in one assignment; live overrides are re-applied on top, so they survive.

A refused file changes nothing: every issue is logged, ``gateway_config_reload_failures_
total`` counts it, the API answers 422 with the issues, and the audit trail records it.
A file that keeps failing is retried only when it changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

import modules

from ..config import GatewayConfig, load_config
from ..errors import ConfigError, ConfigIssue, StoreUnavailable
from .store import AuditEntry

if TYPE_CHECKING:
    from .plane import ControlPlane

log = logging.getLogger("chatgw.control")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    trigger: str
    issues: list[ConfigIssue] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "trigger": self.trigger,
            "summary": self.summary,
            "issues": [
                {"file": i.file, "line": i.line, "path": i.path, "message": i.message,
                 "text": str(i)}
                for i in self.issues
            ],
        }  # fmt: skip


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def diff_summary(old: GatewayConfig, new: GatewayConfig) -> str:
    before = {r.name: r for r in old.routes}
    after = {r.name: r for r in new.routes}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
    parts = [f"{len(new.routes)} routes"]
    for sign, names in (("+", added), ("-", removed), ("~", changed)):
        if names:
            parts.append(sign + ",".join(names))
    return " ".join(parts)


class Reloader:
    def __init__(self, plane: ControlPlane, path: str, *, poll: float = 1.0) -> None:
        self.plane = plane
        self.path = path
        self.poll = poll
        self.last: ReloadResult | None = None
        self.last_at: float | None = None
        self._seen = _signature(path)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._sighup = False
        self._pending: set[asyncio.Task[Any]] = set()
        r = plane.gateway.metrics.registry
        self.m_failures = Counter(
            "gateway_config_reload_failures", "routes.yaml reloads refused", registry=r
        )
        self.m_reloads = Counter(
            "gateway_config_reloads", "routes.yaml reloads by result", ["result"], registry=r
        )
        self.m_ok = Gauge(
            "gateway_config_last_reload_ok", "1 if the last reload was applied, 0 if refused",
            registry=r,
        )  # fmt: skip
        self.m_ok.set(1)

    def start(self) -> None:
        self._seen = _signature(self.path)
        self._task = asyncio.create_task(self._watch(), name="chatgw-config-watch")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only the main thread of a Unix event loop can own a signal.
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False

    def _on_sighup(self) -> None:
        log.warning("SIGHUP: reloading %s", self.path)
        task = asyncio.create_task(self.reload(who="signal", source="reload", trigger="SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            sig = _signature(self.path)
            if sig is not None and sig != self._seen:
                await self.reload(who="file-watch", source="reload", trigger="file changed")

    async def reload(
        self, *, who: str, source: str, trigger: str, reason: str = ""
    ) -> ReloadResult:
        async with self._lock:
            self._seen = _signature(self.path)
            gateway = self.plane.gateway
            old = gateway.table.config
            try:
                config = load_config(self.path, known_modules=modules.names())
                await gateway.apply_config(config)
            except ConfigError as exc:
                result = ReloadResult(False, trigger, list(exc.issues))
            except Exception as exc:
                log.exception("reload of %s could not be applied", self.path)
                issue = ConfigIssue(self.path, None, "", f"could not be applied: {exc!r}")
                result = ReloadResult(False, trigger, [issue])
            else:
                self.plane.controller.reapply()  # overrides of routes the new file has
                result = ReloadResult(True, trigger, summary=diff_summary(old, config))
            self.last, self.last_at = result, time.time()
        if result.ok:
            self.m_reloads.labels("ok").inc()
            self.m_ok.set(1)
            log.warning("config reloaded from %s (%s): %s", self.path, trigger, result.summary)
            entry = AuditEntry(who, source, "reload", "*", None, None, reason or trigger,
                               detail=result.summary)  # fmt: skip
        else:
            self.m_failures.inc()
            self.m_reloads.labels("refused").inc()
            self.m_ok.set(0)
            for issue in result.issues:
                log.error("config reload refused: %s", issue)
            log.error("config reload refused (%s): still serving the last good config", trigger)
            text = "; ".join(str(i) for i in result.issues)
            entry = AuditEntry(who, source, "reload-refused", "*", None, None,
                               reason or trigger, detail=text[:2000])  # fmt: skip
        try:
            await self.plane.store.record(entry)
        except StoreUnavailable as exc:
            log.warning("reload not recorded in the audit trail: %s", exc)
        return result
