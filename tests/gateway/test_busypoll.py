"""gateway.busypoll: the loop polls instead of sleeping while requests come one at a time.

On both loops, a poke keeps the loop busy (CPU is spent while the coroutine sleeps) for
the window and no longer. Under the gateway's server protocol, in front of the real Node
upstream: client traffic at an idle gateway starts a poll, traffic while a request is in
flight does not, and the in-flight count comes back to 0 however a request ends. A
``chatgw serve`` process takes ``CHATGW_BUSY_POLL_US``, reports the time it polled on
``/metrics``, and refuses a malformed value before it serves.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import Run, ThreadServer, Upstreams, metric, read_responses

from gateway.app import Gateway
from gateway.busypoll import BUSY_POLL_ENV, BusyPoll, window_from_env
from gateway.config import load_config
from gateway.server import uvicorn_config

# -- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "window"), [("", 0.0), ("0", 0.0), (" 300 ", 0.0003), ("10000", 0.01)]
)
def test_the_window_is_read_in_microseconds(raw: str, window: float) -> None:
    assert window_from_env({BUSY_POLL_ENV: raw}) == pytest.approx(window)
    assert window_from_env({}) == 0.0


@pytest.mark.parametrize("raw", ["abc", "-5", "1.5", "3e2", "10001"])
def test_a_malformed_window_is_refused_with_the_variable_and_the_reason(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"CHATGW_BUSY_POLL_US='{raw}': expected a whole"):
        window_from_env({BUSY_POLL_ENV: raw})


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
    async def main() -> tuple[float, float]:
        poll = BusyPoll(asyncio.get_running_loop(), 0.05)
        t0 = time.perf_counter()
        poll.poke()
        await asyncio.sleep(0.03)
        poll.poke()  # 30 ms in: polls until 80 ms
        while poll.running:
            await asyncio.sleep(0.002)
        return time.perf_counter() - t0, poll.polled

    elapsed, polled = run(main())
    assert elapsed >= 0.08
    assert 0.075 <= polled < elapsed + 0.001  # one spell, not two overlapping ones


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


def test_off_by_default(upstreams: Upstreams, tmp_path: Path) -> None:
    server = _Server(upstreams, tmp_path, busy_poll=0.0)
    try:
        with server.connect() as c:
            assert _get(c, "/echo/1").startswith(b"HTTP/1.1 200 ")
        assert server.poll is None
    finally:
        server.stop()


# -- a serving gateway ----------------------------------------------------------------------


def test_a_serving_gateway_polls_and_reports_the_time(
    start_gateway: Any, upstreams: Upstreams
) -> None:
    config = {
        "upstreams": {"a": {"url": upstreams.url("a")}},
        "routes": [{"name": "echo", "match": {"prefix": "/echo"}, "legacy": "a"}],
    }
    on = start_gateway(config, **{BUSY_POLL_ENV: "10000"})
    off = start_gateway(config)
    for g in (on, off):
        with g.client() as http:
            for i in range(5):
                assert http.get(f"/echo/{i}").status_code == 200
    time.sleep(0.05)  # the last poll ends
    assert 0.01 <= metric(on.metrics(), "gateway_busy_poll_seconds_total") < 5
    assert metric(off.metrics(), "gateway_busy_poll_seconds_total") == 0


def test_a_malformed_window_stops_the_gateway_before_it_serves(start_gateway: Any) -> None:
    config = {
        "upstreams": {"x": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "x", "match": {"prefix": "/x"}, "legacy": "x"}],
    }
    with pytest.raises(RuntimeError, match=rf"{BUSY_POLL_ENV}='lots': expected a whole"):
        start_gateway(config, **{BUSY_POLL_ENV: "lots"})
