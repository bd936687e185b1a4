"""Ramps: steps at intervals, stop, and the ``ramp_may_advance`` veto."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control_helpers import CONFIG, api, eventually, gateway, percent, run, wait_until

from gateway.control.plane import ControlPlane
from gateway.control.store import LocalWeightStore


def test_steps_advance_at_intervals_then_the_ramp_ends(replicas: Callable[..., list[Any]]) -> None:
    a, b = replicas(2, CONFIG)
    with api(a.admin_url) as c:
        t0 = time.monotonic()
        r = c.post(
            "/api/routes/beta/ramp", json={"steps": [1, 5, 25], "every": "300ms", "reason": "GA"}
        )
        assert r.status_code == 201, r.text
        seen: list[tuple[float, float]] = []
        while time.monotonic() - t0 < 3:
            pct = percent(a.admin_url, "beta")
            if not seen or seen[-1][1] != pct:
                seen.append((time.monotonic() - t0, pct))
            if pct == 25:
                break
            time.sleep(0.02)
        assert [p for _, p in seen] == [1, 5, 25]
        assert seen[2][0] >= 0.55  # two intervals of 300 ms
        # The other replica shows the ramp while it runs and applies its steps.
        wait_until(lambda: c.get("/api/routes/beta").json()["ramp"] is None, timeout=3)
        assert percent(b.admin_url, "beta") == 25
        actions = [e["action"] for e in c.get("/api/audit?route=beta").json()["entries"]]
        assert actions == ["ramp-done", "ramp-step", "ramp-step", "ramp-step", "ramp-start"]


def test_stop_through_another_replica_ends_the_ramp(replicas: Callable[..., list[Any]]) -> None:
    a, b = replicas(2, CONFIG)
    with api(a.admin_url) as ca, api(b.admin_url) as cb:
        ca.post("/api/routes/beta/ramp", json={"steps": [2, 50, 100], "every": "1s",
                                               "reason": "x"}).raise_for_status()  # fmt: skip
        # stopped once its first step is in (stopped before it, a ramp changes nothing)
        wait_until(lambda: cb.get("/api/routes/beta").json()["ramp"] is not None, timeout=3)
        wait_until(lambda: percent(b.admin_url, "beta") == 2, timeout=3)
        r = cb.post("/api/routes/beta/ramp/stop", json={"reason": "enough"})
        assert r.status_code == 200, r.text
        time.sleep(2.5)
        assert percent(a.admin_url, "beta") == 2 and percent(b.admin_url, "beta") == 2
        assert ca.get("/api/routes/beta").json()["ramp"] is None


def test_ramp_may_advance_false_halts_it(tmp_path: Path) -> None:
    async def go() -> None:
        gw = gateway()
        plane = ControlPlane(gw, "routes.yaml", env={"GATEWAY_ADMIN_TOKEN": "t"},
                             store=LocalWeightStore(str(tmp_path)), replica="r1")  # fmt: skip
        await plane.controller.start()
        await plane.ramps.start()
        allowed = {"n": 2}

        def may_advance(route: str) -> bool:
            allowed["n"] -= 1
            return allowed["n"] >= 0

        plane.ramp_may_advance = may_advance
        await plane.ramps.begin("beta", [100, 500, 2500], 0.1, who="t", reason="x", source="api")
        await eventually(lambda: plane.controller.snapshot.ramps["beta"].state == "halted", 3)
        ramp = plane.controller.snapshot.ramps["beta"]
        assert ramp.index == 1 and ramp.note == "ramp_may_advance said no"
        route = gw.table.config.route("beta")
        assert route is not None and gw.table.basis(route) == 500  # stays at the last step
        assert plane.ramps.tasks == {}
        actions = [e.action for e in await plane.audit(route="beta")]
        assert actions == ["ramp-halt", "ramp-step", "ramp-step", "ramp-start"]
        await plane.stop()

    run(go())


def test_manual_set_stops_a_running_ramp(tmp_path: Path) -> None:
    async def go() -> None:
        gw = gateway()
        plane = ControlPlane(gw, "routes.yaml", env={}, store=LocalWeightStore(str(tmp_path)),
                             replica="r1")  # fmt: skip
        await plane.controller.start()
        await plane.ramps.start()
        await plane.ramps.begin("beta", [100, 5000], 0.2, who="t", reason="x", source="api")
        await plane.set_percent("beta", 300, who="t", reason="hold", source="api")
        assert "beta" not in plane.controller.snapshot.ramps and plane.ramps.tasks == {}
        await __import__("asyncio").sleep(0.4)
        route = gw.table.config.route("beta")
        assert route is not None and gw.table.basis(route) == 300
        await plane.stop()

    run(go())


def test_restarted_owner_clears_its_ramp(tmp_path: Path) -> None:
    async def go() -> None:
        store = LocalWeightStore(str(tmp_path))
        first = ControlPlane(gateway(), "routes.yaml", env={}, store=store, replica="host:1")
        await first.controller.start()
        await first.ramps.start()
        await first.ramps.begin("beta", [100, 200], 60, who="t", reason="x", source="api")
        await first.ramps.stop()  # the process dies: its task is gone, the record stays
        second = ControlPlane(gateway(), "routes.yaml", env={}, store=store, replica="host:1")
        await second.controller.start()
        await second.ramps.start()
        assert second.controller.snapshot.ramps == {}
        assert (await second.audit(limit=1))[0].detail == "owner replica restarted"

    run(go())
