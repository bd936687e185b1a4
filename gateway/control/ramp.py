"""Staged ramps: raise a route through a list of percentages, one step every interval.

::

    chatgw ramp sessions --steps 1,5,25,50,100 --every 10m --reason "session module GA"

The first step is applied at once, the next ones ``every`` apart; the ramp ends after the
last. Before every step the plane's ``ramp_may_advance(route)`` hook is asked (True by
default; the guard plugs in there): a "no" *halts* the ramp where it is, recorded as
``halted`` with the reason until someone stops it, starts another or rolls the route back.

Ownership: a ramp is run by the replica that started it (its asyncio task) and recorded
in the store, so every replica shows it and any replica can stop it (the owner sees the
record vanish on its next snapshot and cancels its task). Nothing is fancier than that:
**a restart of the owning replica stops the ramp** — on start, a replica clears the ramps
recorded under its own name (``host:admin_port``) as "owner restarted"; a ramp whose owner
never comes back stays shown until stopped by hand. A manual ``set`` or a ``rollback`` of
the route also ends its ramp. If the store is unreachable at a step, the step is retried
at the next interval (a ramp never moves on a replica that cannot record it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ChangeRefused, StoreUnavailable
from .store import AuditEntry, Change, Ramp, RampGone, Snapshot

if TYPE_CHECKING:
    from .plane import ControlPlane

log = logging.getLogger("chatgw.control")

MIN_EVERY = 0.05  # seconds; tests use 200 ms, operators minutes


class RampRunner:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.tasks: dict[str, tuple[Ramp, asyncio.Task[None]]] = {}

    async def start(self) -> None:
        self.plane.controller.listeners.append(self._on_snapshot)
        stale = {
            route: ramp
            for route, ramp in self.plane.controller.snapshot.ramps.items()
            if ramp.owner == self.plane.replica
        }
        if stale:
            entries = [
                AuditEntry("system", "ramp", "ramp-stop", route, None, None, ramp.reason,
                           detail="owner replica restarted")
                for route, ramp in stale.items()
            ]  # fmt: skip
            try:
                await self.plane.commit(Change({}, dict.fromkeys(stale), entries))
            except StoreUnavailable as exc:
                log.warning("could not clear this replica's stale ramps: %s", exc)

    async def stop(self) -> None:
        tasks = [task for _, task in self.tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()

    def _on_snapshot(self, snap: Snapshot) -> None:
        for route, (mine, task) in list(self.tasks.items()):
            rec = snap.ramps.get(route)
            if rec is None or rec.owner != mine.owner or rec.started_at != mine.started_at:
                task.cancel()
                self.tasks.pop(route, None)

    async def begin(
        self, name: str, steps: list[int], every: float, *, who: str, reason: str, source: str
    ) -> dict[str, Any]:
        plane = self.plane
        plane.switchable(name)
        if not steps:
            raise ChangeRefused("a ramp needs at least one step", 400)
        if any(not 0 <= s <= 10_000 for s in steps):
            raise ChangeRefused("every step must be between 0 and 100", 400)
        if every < MIN_EVERY:
            raise ChangeRefused(f"--every must be at least {MIN_EVERY * 1000:g} ms", 400)
        await plane.controller.refresh()
        current = plane.controller.snapshot.ramps.get(name)
        if current is not None and current.state == "running":
            raise ChangeRefused(
                f"a ramp is already running on {name!r} (started by {current.who} on "
                f"{current.owner}): stop it first"
            )
        ramp = Ramp(name, tuple(steps), every, plane.replica, who, reason, time.time())
        pct = ", ".join(f"{s / 100:g}" for s in steps)
        entry = AuditEntry(who, source, "ramp-start", name, None, None, reason,
                           detail=f"steps {pct} every {every:g}s")  # fmt: skip
        version = await plane.commit(Change({}, {name: ramp}, [entry]))
        task = asyncio.create_task(self._run(ramp), name=f"chatgw-ramp-{name}")
        self.tasks[name] = (ramp, task)
        return {"route": name, "ramp": ramp.view(), "version": version}

    async def end(self, name: str, *, who: str, reason: str, source: str) -> dict[str, Any]:
        plane = self.plane
        plane.route(name)
        await plane.controller.refresh()
        ramp = plane.controller.snapshot.ramps.get(name)
        if ramp is None:
            raise ChangeRefused(f"no ramp on {name!r}", 404)
        entry = AuditEntry(who, source, "ramp-stop", name, None, None, reason,
                           detail=f"at step {ramp.index + 1} of {len(ramp.steps)}")  # fmt: skip
        version = await plane.commit(Change({}, {name: None}, [entry]))
        mine = self.tasks.pop(name, None)
        if mine is not None:
            mine[1].cancel()
        return {"route": name, "stopped": ramp.view(), "version": version}

    def _still_mine(self, ramp: Ramp) -> bool:
        rec = self.plane.controller.snapshot.ramps.get(ramp.route)
        return rec is not None and rec.owner == ramp.owner and rec.started_at == ramp.started_at

    async def _run(self, ramp: Ramp) -> None:
        plane = self.plane
        name = ramp.route
        mark = (name, ramp.started_at)  # every write is conditional on the ramp still existing
        i = 0
        first = True
        try:
            while i < len(ramp.steps):
                if not first:
                    await asyncio.sleep(ramp.every)
                first = False
                await plane.controller.refresh()
                if not self._still_mine(ramp):
                    return
                ok, why = await plane.may_advance(name)
                if not ok:
                    halted = replace(ramp, state="halted", note=why)
                    entry = AuditEntry(ramp.who, "ramp", "ramp-halt", name, None, None,
                                       ramp.reason, detail=why)  # fmt: skip
                    await plane.commit(Change({}, {name: halted}, [entry], if_ramp=mark))
                    return
                step = ramp.steps[i]
                try:
                    async with plane._write:
                        before = plane.gateway.table.basis(plane.route(name))
                        ramp = replace(ramp, index=i)
                        entry = AuditEntry(ramp.who, "ramp", "ramp-step", name, before / 100,
                                           step / 100, ramp.reason,
                                           detail=f"step {i + 1} of {len(ramp.steps)}")  # fmt: skip
                        await plane.commit(
                            Change({name: step}, {name: ramp}, [entry], if_ramp=mark)
                        )
                except StoreUnavailable as exc:
                    log.warning("ramp %s: step %d postponed: %s", name, i + 1, exc)
                    ramp = replace(ramp, index=i - 1)
                    continue
                i += 1
            entry = AuditEntry(ramp.who, "ramp", "ramp-done", name, None,
                               ramp.steps[-1] / 100, ramp.reason)  # fmt: skip
            await plane.commit(Change({}, {name: None}, [entry], if_ramp=mark))
        except RampGone:
            log.warning("ramp on %s ended elsewhere (stopped or replaced)", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ramp on %s failed", name)
        finally:
            current = self.tasks.get(name)
            if current is not None and current[1] is asyncio.current_task():
                del self.tasks[name]
