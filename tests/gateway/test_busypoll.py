"""gateway.busypoll: the loop polls instead of sleeping while requests come one at a time.

The setting: 300 µs at most when unset, off under a CPU quota (read from cgroup files, and
from a real cgroup a gateway is started in), a number overrides. The adaptive window: it
grows when requests come just after the loop fell asleep, halves to off when they come
sparsely. On both loops, a poke keeps the loop busy (CPU is spent while the coroutine
sleeps) for the window and no longer. Under the gateway's server protocol, in front of the
real Node upstream: client traffic at an idle gateway starts a poll, traffic while a
request is in flight does not, the in-flight count comes back to 0 however a request ends,
and sparse requests turn polling off. A ``chatgw serve`` process logs its setting, reports
the time it polled and its window on ``/metrics``, and refuses a malformed value before it
serves."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import (
    GatewayProc,
    Run,
    StartGateway,
    ThreadServer,
    Upstreams,
    metric,
    read_responses,
)
from tests_support import need

from gateway.app import Gateway
from gateway.busypoll import (
    BUSY_POLL_ENV,
    DEFAULT_WINDOW_US,
    BusyPoll,
    cpu_quota,
    setting_from_env,
)
from gateway.config import load_config
from gateway.server import uvicorn_config

# -- the setting ----------------------------------------------------------------------------


def _no_quota() -> None:
    return None


def _quota() -> tuple[float, str]:
    return 0.5, "/sys/fs/cgroup/kubepods/pod1/c1"


@pytest.mark.parametrize(
    ("raw", "most"), [("", 0.0003), ("0", 0.0), (" 300 ", 0.0003), ("10000", 0.01)]
)
def test_the_most_is_read_in_microseconds_and_300_when_unset(raw: str, most: float) -> None:
    assert setting_from_env({BUSY_POLL_ENV: raw}, _no_quota).most == pytest.approx(most)
    assert setting_from_env({}, _no_quota).most == pytest.approx(DEFAULT_WINDOW_US / 1e6)


def test_unset_under_a_cpu_quota_it_is_off_and_says_why() -> None:
    setting = setting_from_env({}, _quota)
    assert setting.most == 0.0
    assert setting.describe() == (
        "busy polling off (a CPU quota of 0.50 cores in /sys/fs/cgroup/kubepods/pod1/c1; "
        "CHATGW_BUSY_POLL_US overrides)"
    )


def test_a_number_is_the_operators_choice_quota_or_not() -> None:
    setting = setting_from_env({BUSY_POLL_ENV: "120"}, _quota)
    assert setting.most == pytest.approx(120e-6)
    assert setting.describe() == "busy polling adaptive, up to 120 µs (CHATGW_BUSY_POLL_US=120)"
    assert setting_from_env({BUSY_POLL_ENV: "0"}, _no_quota).describe() == (
        "busy polling off (CHATGW_BUSY_POLL_US=0)"
    )


@pytest.mark.parametrize("raw", ["abc", "-5", "1.5", "3e2", "10001"])
def test_a_malformed_window_is_refused_with_the_variable_and_the_reason(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"CHATGW_BUSY_POLL_US='{raw}': expected a whole"):
        setting_from_env({BUSY_POLL_ENV: raw}, _no_quota)


# -- the CPU quota, read from cgroup files (a real cgroup further down) ----------------------


def _tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir()
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return proc, root


CGROUPS = {
    "v2, the own group's quota": ("0::/kubepods/pod1/c1\n", {
        "cpu.max": "max 100000\n",
        "kubepods/pod1/c1/cpu.max": "50000 100000\n",
    }, (0.5, "kubepods/pod1/c1")),
    "v2, a parent's quota": ("0::/kubepods/pod1/c1\n", {
        "kubepods/pod1/cpu.max": "150000 100000\n",
        "kubepods/pod1/c1/cpu.max": "max 100000\n",
    }, (1.5, "kubepods/pod1")),
    "v2, no quota": ("0::/user.slice\n", {
        "cpu.max": "max 100000\n", "user.slice/cpu.max": "max 100000\n",
    }, None),
    # no cgroup namespace: /proc says /docker/<id>, the mount shows the container's group
    "v1, a container that sees its group as the root": (
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", {
            "cpu,cpuacct/cpu.cfs_quota_us": "25000\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        }, (0.25, "cpu,cpuacct")),
    "v1, no quota (and a line that is not a cgroup's)": ("2:cpuacct:/\n1:cpu:/\nnoise\n", {
        "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
    }, None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CGROUPS))
def test_the_cpu_quota_is_read_from_the_cgroup_files(tmp_path: Path, case: str) -> None:
    proc_cgroup, files, found = CGROUPS[case]
    proc, root = _tree(tmp_path, proc_cgroup, files)
    expected = None if found is None else (found[0], str(root / found[1]))
    assert cpu_quota(proc, root) == expected


def test_no_cgroups_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "absent", tmp_path) is None


# -- the adaptive window (a clock of the test's own, the loop not run) -----------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Clocked = tuple[BusyPoll, _Clock]


@pytest.fixture
def clocked() -> Iterator[Clocked]:
    loop = asyncio.new_event_loop()
    clock = _Clock()
    yield BusyPoll(loop, 300e-6, clock), clock
    loop.close()


def test_the_window_starts_at_the_most_and_polls_at_once(clocked: Clocked) -> None:
    poll, _ = clocked
    assert poll.window == pytest.approx(300e-6)
    poll.poke()
    assert poll.running


def test_sparse_requests_halve_the_window_until_polling_stops(clocked: Clocked) -> None:
    poll, clock = clocked
    windows = []
    for _ in range(5):
        clock.now += 0.01  # 10 ms apart: longer than the most, polling could not catch them
        if poll.running:
            poll._spin()  # its spell is over
        poll.poke()
        windows.append(round(poll.window * 1e6))
    assert windows == [150, 75, 0, 0, 0]
    assert not poll.running  # off: the loop sleeps


def test_requests_just_past_the_window_grow_it_back_to_the_most(clocked: Clocked) -> None:
    poll, clock = clocked
    poll.window = 0.0
    windows = []
    for _ in range(5):
        clock.now += 0.00025  # 250 µs apart, the window shorter than that
        if poll.running and clock.now >= poll._until:
            poll._spin()
        poll.poke()
        windows.append(round(poll.window * 1e6))
    assert windows == [50, 100, 200, 300, 300]
    assert poll.running


def test_a_request_caught_while_polling_keeps_the_window(clocked: Clocked) -> None:
    poll, clock = clocked
    poll.poke()
    clock.now += 0.0001
    poll._spin()
    assert poll.running
    poll.poke()  # caught
    assert poll.window == pytest.approx(300e-6)
    assert poll._until == pytest.approx(clock.now + 300e-6)


# -- the poll on a loop ---------------------------------------------------------------------


class _Counted(BusyPoll):
    """Counts the loop turns it polled for."""

    turns = 0

    def _spin(self) -> None:
        self.turns += 1
        super()._spin()


def _cpu_while_sleeping(poke: Callable[[BusyPoll], None], window: float, sleep: float) -> Any:
    async def main() -> tuple[float, _Counted]:
        poll = _Counted(asyncio.get_running_loop(), window)
        t0 = time.process_time()
        poke(poll)
        await asyncio.sleep(sleep)
        return time.process_time() - t0, poll

    return main()


def test_a_poke_keeps_the_loop_polling_for_the_window_and_no_longer(run: Run) -> None:
    cpu, poll = run(_cpu_while_sleeping(BusyPoll.poke, 0.05, 0.15))
    # polling: the loop kept turning (on CPU) through the window while the coroutine slept
    # (a turn is a few µs: thousands in 50 ms on an idle machine)
    assert poll.turns >= 50
    assert cpu >= 0.015
    assert cpu < 0.12  # and stopped after it: the rest of the sleep was spent asleep
    assert not poll.running
    assert 0.05 <= poll.polled < 0.15


def test_without_a_poke_the_loop_sleeps(run: Run) -> None:
    cpu, poll = run(_cpu_while_sleeping(lambda p: None, 0.05, 0.1))
    assert poll.turns == 0
    assert cpu < 0.02
    assert poll.polled == 0.0


def test_a_poke_while_polling_extends_the_window(run: Run) -> None:
    async def main() -> tuple[float, float, float]:
        poll = BusyPoll(asyncio.get_running_loop(), 0.05)
        t0 = time.perf_counter()
        poll.poke()
        await asyncio.sleep(0.03)  # (uvloop's millisecond timers may end it up to 1 ms early)
        t1 = time.perf_counter()
        assert poll.running
        poll.poke()  # ~30 ms in: polls until 50 ms after this poke, not after the first
        while poll.running:
            await asyncio.sleep(0.002)
        return t1 - t0, time.perf_counter() - t1, poll.polled

    poked_at, after, polled = run(main())
    assert poked_at >= 0.025
    assert after >= 0.05  # a whole window from the second poke
    # one spell from the first poke to the second one's window end, not two overlapping ones
    assert poked_at + 0.05 - 0.001 <= polled < poked_at + after + 0.001


# -- under the gateway's server protocol ----------------------------------------------------

ROUTES = """
defaults: {{timeout: 10s, sticky: none}}
upstreams:
  a: {{url: "{a}"}}
routes:
  - {{name: echo, match: {{prefix: /echo}}, legacy: a}}
  - {{name: slow, match: {{prefix: /slow}}, legacy: a, timeout: 30s}}
"""


class _Server(ThreadServer):
    def __init__(self, upstreams: Upstreams, tmp_path: Path, busy_poll: float) -> None:
        path = tmp_path / "routes.yaml"
        path.write_text(ROUTES.format(a=upstreams.url("a")))
        self.gateway = Gateway(load_config(str(path)), env={})
        super().__init__(uvicorn_config(self.gateway, busy_poll=busy_poll, log_level="critical"))

    @property
    def poll(self) -> BusyPoll | None:
        return getattr(self.server.server_state, "chatgw_busy_poll", None)

    def in_flight(self, n: int) -> BusyPoll:
        """The poll, once ``n`` requests are in flight."""
        self.wait(lambda: self.poll is not None and self.poll.in_flight == n, f"{n} in flight")
        assert self.poll is not None
        return self.poll

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)


def _get(c: socket.socket, path: str, *, read: bool = True) -> bytes:
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_responses(c) if read else b""


@pytest.fixture
def polling(upstreams: Upstreams, tmp_path: Path) -> Iterator[_Server]:
    server = _Server(upstreams, tmp_path, busy_poll=0.2)
    yield server
    server.stop()


def test_a_request_at_an_idle_gateway_starts_a_poll(polling: _Server) -> None:
    with polling.connect() as c:
        assert _get(c, "/echo/1").startswith(b"HTTP/1.1 200 ")
    poll = polling.poll
    assert poll is not None
    polling.wait(lambda: poll.polled > 0, "the poll ended and counted its time")
    assert 0.2 <= poll.polled < 5
    assert poll.in_flight == 0


def test_traffic_while_a_request_is_in_flight_starts_no_poll(polling: _Server) -> None:
    with polling.connect() as slow, polling.connect() as c:
        _get(slow, "/slow?ms=1500&tag=busypoll", read=False)
        poll = polling.in_flight(1)
        polling.wait(lambda: not poll.running, "its poll is over")
        polled = poll.polled
        for i in range(3):
            assert _get(c, f"/echo/{i}").startswith(b"HTTP/1.1 200 ")
        assert not poll.running and poll.polled == polled  # none started
        assert poll.in_flight == 1
        assert read_responses(slow).startswith(b"HTTP/1.1 200 ")
    polling.wait(lambda: poll.in_flight == 0, "both requests done")


def test_the_in_flight_count_comes_back_when_a_client_leaves_mid_request(
    polling: _Server,
) -> None:
    c = polling.connect()
    _get(c, "/slow?ms=3000&tag=busypoll-gone", read=False)
    poll = polling.in_flight(1)
    c.close()
    polling.wait(lambda: poll.in_flight == 0, "the lost request is no longer counted")
    with polling.connect() as c2:  # and the next request at the idle gateway polls again
        running_before = poll.polled
        assert _get(c2, "/echo/after").startswith(b"HTTP/1.1 200 ")
    polling.wait(lambda: poll.polled > running_before, "a new poll")


def test_pipelined_requests_are_counted_one_at_a_time(polling: _Server) -> None:
    with polling.connect() as c:
        c.sendall(
            b"GET /echo/p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/p2 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first, second = read_responses(c, 2)
        assert b"/echo/p1" in first and b"/echo/p2" in second
    poll = polling.poll
    assert poll is not None
    polling.wait(lambda: poll.in_flight == 0, "both pipelined requests done")


def test_sparse_requests_stop_the_polling_and_quick_ones_bring_it_back(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    server = _Server(upstreams, tmp_path, busy_poll=0.005)
    try:
        with server.connect() as c:
            for i in range(10):  # 60 ms apart, the most is 5 ms: 5 → 2.5 → … → off
                assert _get(c, f"/echo/sparse{i}").startswith(b"HTTP/1.1 200 ")
                time.sleep(0.06)
            poll = server.poll
            assert poll is not None
            assert poll.window == 0.0 and not poll.running
            polled = poll.polled
            assert _get(c, "/echo/sparse-more").startswith(b"HTTP/1.1 200 ")
            assert poll.polled == polled and not poll.running  # asleep between them
            for i in range(30):  # one after the other: well within 5 ms of each other
                assert _get(c, f"/echo/quick{i}").startswith(b"HTTP/1.1 200 ")
            assert poll.window >= 0.0008  # grown past the gaps between them
        server.wait(lambda: poll.polled > polled, "the quick requests were polled for")
    finally:
        server.stop()


def test_off_with_no_window(upstreams: Upstreams, tmp_path: Path) -> None:
    server = _Server(upstreams, tmp_path, busy_poll=0.0)  # uvicorn_config's default
    try:
        with server.connect() as c:
            assert _get(c, "/echo/1").startswith(b"HTTP/1.1 200 ")
        assert server.poll is None
    finally:
        server.stop()


# -- a serving gateway ----------------------------------------------------------------------


def _echo(upstreams: Upstreams) -> dict[str, Any]:
    return {
        "upstreams": {"a": {"url": upstreams.url("a")}},
        "routes": [{"name": "echo", "match": {"prefix": "/echo"}, "legacy": "a"}],
    }


def _traffic(g: GatewayProc) -> str:
    """Five requests one after the other, then the gateway's /metrics once its poll ended."""
    with g.client() as http:
        for i in range(5):
            assert http.get(f"/echo/{i}").status_code == 200
    time.sleep(0.05)  # the last poll ends
    return g.metrics()


def test_a_serving_gateway_polls_and_reports_the_time(
    start_gateway: StartGateway, upstreams: Upstreams
) -> None:
    on = start_gateway(_echo(upstreams), **{BUSY_POLL_ENV: "10000"})
    off = start_gateway(_echo(upstreams), **{BUSY_POLL_ENV: "0"})
    assert "chatgw: busy polling adaptive, up to 10000 µs (CHATGW_BUSY_POLL_US=10000)" in (
        on.stderr()
    )
    assert "chatgw: busy polling off (CHATGW_BUSY_POLL_US=0)" in off.stderr()
    on_metrics, off_metrics = _traffic(on), _traffic(off)
    assert 0.01 <= metric(on_metrics, "gateway_busy_poll_seconds_total") < 5
    assert metric(on_metrics, "gateway_busy_poll_window_seconds") == pytest.approx(0.01)
    assert metric(off_metrics, "gateway_busy_poll_seconds_total") == 0
    assert metric(off_metrics, "gateway_busy_poll_window_seconds") == 0


def test_by_default_it_polls_up_to_300_us_unless_under_a_cpu_quota(
    start_gateway: StartGateway, upstreams: Upstreams
) -> None:
    g = start_gateway(_echo(upstreams))  # CHATGW_BUSY_POLL_US unset
    polled = metric(_traffic(g), "gateway_busy_poll_seconds_total")
    quota = cpu_quota()  # this process's cgroup is the gateway's
    if quota is None:
        assert "chatgw: busy polling adaptive, up to 300 µs (CHATGW_BUSY_POLL_US unset" in (
            g.stderr()
        )
        assert polled > 0
    else:
        assert f"busy polling off (a CPU quota of {quota[0]:.2f} cores in {quota[1]}" in (
            g.stderr()
        )
        assert polled == 0


@pytest.fixture
def quota_cgroup() -> Iterator[Path]:
    """A real cgroup with a CFS quota of half a core (v1 ``cpu`` or v2), removed after."""
    v1 = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup")
    v2_control = v2 / "cgroup.subtree_control"
    base = v1
    if not (v1 / "cpu.cfs_quota_us").exists():
        base = v2
        need(
            v2_control.exists() and "cpu" in v2_control.read_text().split(),
            "no cgroup cpu controller here (v1 cpu, or v2 with cpu enabled)",
        )
    # (skipped on a developer's machine without root; a failure in CI, like a missing service)
    need(
        os.geteuid() == 0 and os.access(base, os.W_OK),
        f"{base} is not writable: a cgroup with a CPU quota needs root",
    )
    group = base / f"chatgw-test-quota-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if base is v1:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("50000")
        else:
            (group / "cpu.max").write_text("50000 100000")
        yield group
    finally:  # (after start_gateway's teardown stopped the gateways: see the test)
        for _ in range(100):
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    (group.parent / "cgroup.procs").write_text(pid)
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_a_gateway_started_under_a_cpu_quota_does_not_poll_unless_told_to(
    quota_cgroup: Path, start_gateway: StartGateway, upstreams: Upstreams
) -> None:
    # quota_cgroup first: set up before start_gateway, so torn down after the gateways stop
    env = {"CHATGW_TEST_CGROUP": str(quota_cgroup)}
    default = start_gateway(_echo(upstreams), launcher="in_cgroup", **env)
    told = start_gateway(_echo(upstreams), launcher="in_cgroup", **env, **{BUSY_POLL_ENV: "300"})
    for g in (default, told):  # both really run in the cgroup
        assert str(g.pid) in (quota_cgroup / "cgroup.procs").read_text().split()
    assert (
        f"chatgw: busy polling off (a CPU quota of 0.50 cores in {quota_cgroup}; "
        "CHATGW_BUSY_POLL_US overrides)"
    ) in default.stderr()
    assert metric(_traffic(default), "gateway_busy_poll_seconds_total") == 0
    assert "chatgw: busy polling adaptive, up to 300 µs (CHATGW_BUSY_POLL_US=300)" in (
        told.stderr()
    )
    assert metric(_traffic(told), "gateway_busy_poll_seconds_total") > 0


def test_a_malformed_window_stops_the_gateway_before_it_serves(start_gateway: Any) -> None:
    config = {
        "upstreams": {"x": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "x", "match": {"prefix": "/x"}, "legacy": "x"}],
    }
    with pytest.raises(RuntimeError, match=rf"{BUSY_POLL_ENV}='lots': expected a whole"):
        start_gateway(config, **{BUSY_POLL_ENV: "lots"})
