"""``settings.shadow.isolation: process``: the copies run in a child process at lower CPU
priority, and everything the operator reads about them stays in the gateway.

(Every test of test_mirror.py, test_dry_run.py and test_record.py also runs in both
isolations: the ``shadow_isolation`` fixture.) These are the process's own behaviours: where
the copies run, at which priority, its CPU on /metrics, a crash, a reload, a failed start and
the gateway's exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest
from gateway_process import ROOT
from shadow_helpers import ShadowGateway, routes_text

EXACT = "{percent: 100, compare: {normalise: [timestamp], ignore: ['$.nonce']}}"
PROCESS = "  shadow: {isolation: process, nice: 7}"
LOOP = "  shadow: {isolation: loop}"

Make = Callable[..., ShadowGateway]


@pytest.fixture
def shadow_isolation() -> str:
    """These tests name their isolation in the config: one run each."""
    return "as-configured"


def _metric(gw: ShadowGateway, name: str) -> float | None:
    for line in httpx.get(gw.admin + "/metrics", trust_env=False).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_copies_run_in_a_child_process_at_lower_priority(
    shadow_gateway: Make, test_upstream: str
) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=PROCESS))
    status = gw.api("/api/shadow")
    assert status["isolation"] == "process"
    pid = status["worker"]["pid"]
    assert pid in _children(gw.proc.pid)
    assert "gateway.shadow.worker" in _cmdline(pid)
    assert os.getpriority(os.PRIO_PROCESS, pid) == 7
    assert os.getpriority(os.PRIO_PROCESS, gw.proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    # The module's answer to a copy names the process that made it: the worker, not the
    # gateway (a mismatch by construction: legacy answers with its own pid).
    with gw.client() as c:
        r = c.get("/api/pid")
        assert r.json()["side"] == "legacy"
    assert gw.wait_counts(1)["mismatch"] == 1
    sample = gw.api("/api/shadow/samples?route=items")["data"][0]
    assert f'"pid":{pid}' in sample["shadow"]["body"].replace(" ", "")


def test_the_worker_runs_in_the_idle_scheduling_class_by_default(
    shadow_gateway: Make, test_upstream: str
) -> None:
    gw = shadow_gateway(
        routes_text(test_upstream, EXACT, settings="  shadow: {isolation: process}")
    )
    pid = gw.api("/api/shadow")["worker"]["pid"]
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert os.sched_getscheduler(gw.proc.pid) == os.SCHED_OTHER
    with gw.client() as c:
        for i in range(10):
            assert c.get(f"/api/items/{i}").status_code == 200
    assert gw.wait_counts(10)["match"] == 10  # an idle box has CPU to spare for them


def test_the_worker_runs_with_the_gateways_collector_settings(
    shadow_gateway: Make, test_upstream: str
) -> None:
    # gateway.gc_tuning in the worker too: CHATGW_GC_THRESHOLD, and its start-up heap frozen
    gw = shadow_gateway(
        routes_text(test_upstream, EXACT, settings=PROCESS), CHATGW_GC_THRESHOLD="12345,11,12"
    )
    gc_info = gw.api("/api/shadow")["worker"]["gc"]
    assert gc_info["threshold"] == [12345, 11, 12]
    assert gc_info["frozen"] > 1000
    gw = shadow_gateway(
        routes_text(test_upstream, EXACT, settings=PROCESS), CHATGW_GC_THRESHOLD="python"
    )
    gc_info = gw.api("/api/shadow")["worker"]["gc"]
    assert gc_info == {"threshold": [700, 10, 10], "frozen": 0}


def test_outcomes_and_worker_cpu_reach_the_gateway(
    shadow_gateway: Make, test_upstream: str
) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=PROCESS))
    assert _metric(gw, "gateway_shadow_worker_cpu_seconds_total") is not None
    with gw.client() as c:
        for i in range(50):
            assert c.get(f"/api/items/{i}").status_code == 200
    assert gw.wait_counts(50)["match"] == 50
    status = gw.api("/api/shadow")
    assert status["routes"]["items"]["mismatch_rate"] == 0.0  # what the guard reads
    assert status["worker"]["in_flight"] == 0
    assert status["worker"]["cpu_seconds"] > 0
    cpu = _metric(gw, "gateway_shadow_worker_cpu_seconds_total")
    assert cpu is not None and cpu > 0
    assert _metric(gw, "gateway_shadow_worker_in_flight") == 0


def test_loop_isolation_starts_no_process(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=LOOP))
    with gw.client() as c:
        c.get("/api/items/1")
    assert gw.wait_counts(1)["match"] == 1
    status = gw.api("/api/shadow")
    assert status["isolation"] == "loop" and "worker" not in status
    assert not [p for p in _children(gw.proc.pid) if "gateway.shadow.worker" in _cmdline(p)]
    assert _metric(gw, "gateway_shadow_worker_cpu_seconds_total") is None


def test_a_killed_worker_costs_its_copies_and_is_started_again(
    shadow_gateway: Make, test_upstream: str
) -> None:
    settings = "  shadow: {isolation: process, workers: 4, timeout: 5s}"
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=settings), SHADOW_TEST_SLOW="2")
    first = gw.api("/api/shadow")["worker"]["pid"]
    with gw.client() as c:
        for i in range(3):
            assert c.get(f"/api/items/{i}").status_code == 200
        assert _wait(lambda: gw.api("/api/shadow")["worker"]["in_flight"] == 3)
        os.kill(first, signal.SIGKILL)
        # the three copies it held are errors, never silently lost
        assert gw.wait_counts(3)["error"] == 3
        assert _wait(lambda: (gw.api("/api/shadow")["worker"]["pid"] or first) != first)
        status = gw.api("/api/shadow")["worker"]
        assert status["restarts"] == 1
        assert _metric(gw, "gateway_shadow_worker_restarts_total") == 1
        # the client never noticed, and the new worker makes copies again
        assert c.get("/api/items/9").status_code == 200
    counts = gw.wait_counts(4, timeout=15)
    assert counts["match"] == 1 and counts["error"] == 3, counts
    assert f"shadow worker process {first} exited" in gw.log()


def test_a_reload_reaches_the_worker(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=PROCESS))
    with gw.client() as c:
        c.get("/api/items/1")
        assert gw.wait_counts(1)["match"] == 1
        # without `ignore: [$.nonce]` every copy differs (the nonce is random): the
        # comparison is made in the worker, so a mismatch shows it got the new rules
        strict = "{percent: 100, compare: {normalise: [timestamp]}}"
        with open(gw.config, "w", encoding="utf-8") as fh:
            fh.write(routes_text(test_upstream, strict, settings=PROCESS))
        os.kill(gw.proc.pid, signal.SIGHUP)
        assert _wait(lambda: "config reloaded from" in gw.log(), 10), gw.log()
        c.get("/api/items/2")
    counts = gw.wait_counts(2)
    assert counts == {**counts, "match": 1, "mismatch": 1}, counts
    sample = gw.api("/api/shadow/samples?route=items")["data"][0]
    assert [d["path"] for d in sample["differences"]] == ["$.nonce"]


def test_a_reload_does_not_switch_the_isolation_and_says_so(
    shadow_gateway: Make, test_upstream: str
) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=LOOP))
    with open(gw.config, "w", encoding="utf-8") as fh:
        fh.write(routes_text(test_upstream, EXACT, settings=PROCESS))
    os.kill(gw.proc.pid, signal.SIGHUP)
    assert _wait(lambda: "config reloaded from" in gw.log(), 10), gw.log()
    assert "isolation is now process, but the copies keep running in loop" in gw.log()
    assert gw.api("/api/shadow")["isolation"] == "loop"
    with gw.client() as c:
        c.get("/api/items/1")
    assert gw.wait_counts(1)["match"] == 1


def test_a_reload_that_raises_the_queue_drops_what_the_worker_cannot_hold(
    shadow_gateway: Make, test_upstream: str
) -> None:
    # The worker's queue is sized at its start; after a reload the gateway hands over up
    # to the new size. What does not fit is counted dropped, and the worker lives on.
    small = "  shadow: {isolation: process, queue: 2, workers: 1, timeout: 5s}"
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=small), SHADOW_TEST_SLOW="1")
    with open(gw.config, "w", encoding="utf-8") as fh:
        fh.write(routes_text(test_upstream, EXACT, settings=small.replace("queue: 2", "queue: 50")))
    os.kill(gw.proc.pid, signal.SIGHUP)
    assert _wait(lambda: "config reloaded from" in gw.log(), 10), gw.log()
    with gw.client() as c:
        for i in range(8):
            assert c.get(f"/api/items/{i}").status_code == 200
    counts = gw.wait_counts(8, timeout=15)
    assert counts["dropped"] >= 4 and counts["error"] == 0, counts
    assert counts["dropped"] + counts["match"] == 8, counts
    assert gw.api("/api/shadow")["worker"]["restarts"] == 0


def test_a_worker_that_cannot_start_stops_the_gateway_with_the_reason(
    test_upstream: str, tmp_path: object
) -> None:
    with pytest.raises(RuntimeError) as err:
        ShadowGateway(
            routes_text(test_upstream, EXACT, settings=PROCESS),
            {
                "CHATGW_EXTRA_MODULES": "shadowtest=tests.shadow.shadow_apps:create_module",
                "SHADOW_TEST_FAIL_IN_WORKER": "1",
            },
            str(tmp_path),
        )
    message = str(err.value)
    assert "the shadow worker process did not start" in message
    assert "refuses to start in the shadow worker" in message


def test_the_worker_ends_with_the_gateway(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=PROCESS))
    pid = gw.api("/api/shadow")["worker"]["pid"]
    gw.stop()
    assert _wait(lambda: not _alive(pid), 10), "the worker outlived the gateway"


def test_the_worker_ends_when_the_gateway_is_killed(test_upstream: str, tmp_path: object) -> None:
    # SIGKILL gives the gateway no chance to stop it: the worker sees its stdin close
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.shadow.worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.close()  # what the kernel does when the parent dies
    assert proc.wait(timeout=20) == 0
    gw = ShadowGateway(
        routes_text(test_upstream, EXACT, settings=PROCESS),
        {"CHATGW_EXTRA_MODULES": "shadowtest=tests.shadow.shadow_apps:create_module",
         "GATEWAY_ADMIN_TOKEN": "shadow-test-admin-token"},
        str(tmp_path),
    )  # fmt: skip
    try:
        pid = gw.api("/api/shadow")["worker"]["pid"]
        gw.proc.kill()
        gw.proc.wait()
        assert _wait(lambda: not _alive(pid), 10), "the worker outlived a killed gateway"
    finally:
        gw.stop()
