"""Busy polling while one request at a time comes in: the loop polls instead of sleeping.

When a client's bytes arrive and no request is being served, the event loop keeps polling
its sockets with a zero timeout (``epoll_wait(…, 0)``) for a while instead of blocking.
The upstream's answer to that request, and the client's next request on a keep-alive
connection, then find the process running instead of asleep.

Why: on a virtual machine whose idle vCPU halts at once (``cpuidle`` driver ``haltpoll``
with ``guest_halt_poll_ns`` 0, as on the bench VMs) waking a sleeping process costs an exit
to the hypervisor and back, and the Python that runs after it runs on cold caches. A
proxied request at one connection sleeps twice in the gateway (waiting for the upstream,
then for the client's next request). On the bench VM the gateway's added p50 at one
connection went from +132 to +55 µs, 50 connections unchanged (``bench/README.md``).

**Adaptive**, as a guest kernel's halt-polling is (``drivers/cpuidle/governors/haltpoll.c``):
the window grows (doubling from 50 µs, up to the most allowed) when the loop fell asleep
and was woken by the next request soon after, within the most allowed; it halves, and
below 50 µs stops, when the next request came later than that. So a burst of requests
one at a time polls through the gaps between them, and sparse traffic, which polling
cannot help, soon costs nothing. With requests in flight a poll never starts (the loop has
work, and spinning would only take CPU from the processes whose answers it waits for:
measured on two shared cores, throughput at 50 connections is unchanged).

``CHATGW_BUSY_POLL_US`` sets the most (microseconds, 0 to 10 000):

* unset: up to 300 µs, **unless the process runs under a CPU quota** (a cgroup's
  ``cpu.max`` or ``cpu.cfs_quota_us``, as a container's ``cpu`` limit sets): polling is
  charged to the quota and would be throttled, so there it is off;
* ``0``: off;
* a number: up to that, quota or not (the operator's choice).

The price is CPU: a core while requests come one at a time within the window, which is
time the core would otherwise have been idle. ``serve_one`` logs what was decided and why;
``gateway_busy_poll_seconds_total`` is the time spent polling and
``gateway_busy_poll_window_seconds`` the window now. It is the user-space form of Linux's
``net.core.busy_poll`` and of a guest's halt-polling.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BUSY_POLL_ENV = "CHATGW_BUSY_POLL_US"
MAX_WINDOW_US = 10_000
DEFAULT_WINDOW_US = 300  # loopback or same-rack upstream: its answer and the next request
GROW_START = 50e-6  # the kernel's guest_halt_poll_grow_start


class BusyPoll:
    """One per server and loop. :meth:`poke` on client traffic while :attr:`in_flight` is
    0 keeps the loop polling for :attr:`window` seconds from then; the window adapts
    between ``most`` and 0 (the module doc)."""

    __slots__ = (
        "__weakref__", "_call_soon", "_clock", "_last", "_since", "_until", "in_flight",
        "loop", "most", "polled", "running", "window",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        most: float,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.loop = loop
        self._call_soon = loop.call_soon
        self._clock = clock
        self.most = most
        #: The window now: starts at the most, then follows the traffic.
        self.window = most
        self._until = 0.0
        self._since = 0.0
        self._last = clock()  # the last poke (made with the first connection: as recent)
        #: Polling now (a :meth:`_spin` callback is scheduled).
        self.running = False
        #: Requests being served, counted by gateway.http11's protocol.
        self.in_flight = 0
        #: Seconds spent polling, finished spells only (``gateway_busy_poll_seconds_total``).
        self.polled = 0.0
        _POLLS.add(self)

    def poke(self) -> None:
        now = self._clock()
        gap, self._last = now - self._last, now
        if self.running:  # caught while polling: keep on
            self._until = now + self.window
            return
        # The loop slept since the last poke. Woken again within the most: a longer window
        # would have kept it awake, so grow; later than that: polling was wasted, shrink.
        window = self.window
        if gap <= self.most:
            window = min(self.most, max(GROW_START, window * 2))
        elif window:
            window /= 2
            if window < GROW_START:
                window = 0.0
        self.window = window
        if window:
            self.running = True
            self._since = now
            self._until = now + window
            self._call_soon(self._spin)

    def _spin(self) -> None:
        # A ready callback makes the loop poll with a zero timeout before running it again.
        now = self._clock()
        if now < self._until:
            self._call_soon(self._spin)
        else:
            self.running = False
            self.polled += now - self._since


_POLLS: weakref.WeakSet[BusyPoll] = weakref.WeakSet()


class BusyPollCollector(Collector):
    """``gateway_busy_poll_seconds_total``: the time this process's loops spent polling
    instead of sleeping, and ``gateway_busy_poll_window_seconds``, the window now (both 0
    when busy polling is off), read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        polls = list(_POLLS)
        yield CounterMetricFamily(
            "gateway_busy_poll_seconds",
            "Time the event loop spent polling instead of sleeping (gateway.busypoll)",
            value=sum(p.polled for p in polls),
        )
        yield GaugeMetricFamily(
            "gateway_busy_poll_window_seconds",
            "How long the event loop polls after a request at an idle gateway, now (adaptive)",
            value=max((p.window for p in polls), default=0.0),
        )


def cpu_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> tuple[float, str] | None:
    """The CFS quota this process runs under, in cores, and the cgroup directory that sets
    it; ``None`` without one (or without cgroups). The process's own cgroup and its parents
    are read, cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``); a path that is not
    visible from here (a container without a cgroup namespace sees its own group as the
    root) is read from the nearest visible parent."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:  # not a cgroup line: nothing to read from it
            continue
        _, controllers, path = fields
        if controllers == "":
            found = _walk(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            found = _walk(root / controllers, path, _v1_quota) or _walk(
                root / "cpu", path, _v1_quota
            )
        else:
            continue
        if found is not None:
            return found
    return None


def _walk(mount: Path, path: str, read: Callable[[Path], float | None]) -> tuple[float, str] | None:
    parts = [p for p in path.split("/") if p]
    while True:
        group = mount.joinpath(*parts)
        cores = read(group) if group.is_dir() else None
        if cores is not None:
            return cores, str(group)
        if not parts:
            return None
        parts.pop()


def _v2_quota(group: Path) -> float | None:
    try:
        quota, period = (group / "cpu.max").read_text().split()
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError):
        return None


def _v1_quota(group: Path) -> float | None:
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 else None


@dataclass(frozen=True)
class BusyPollSetting:
    """The most a loop polls (s; 0: off) and why, for the start-up log."""

    most: float
    why: str

    def describe(self) -> str:
        if not self.most:
            return f"busy polling off ({self.why})"
        return f"busy polling adaptive, up to {self.most * 1e6:.0f} µs ({self.why})"


def setting_from_env(
    env: Mapping[str, str] | None = None,
    quota: Callable[[], tuple[float, str] | None] = cpu_quota,
) -> BusyPollSetting:
    """``CHATGW_BUSY_POLL_US`` resolved (the module doc); ``quota``: :func:`cpu_quota`.

    Raises ValueError with the variable, its value and the reason when it is malformed.
    """
    raw = (os.environ if env is None else env).get(BUSY_POLL_ENV, "").strip()
    if not raw:
        found = quota()
        if found is not None:
            cores, where = found
            return BusyPollSetting(
                0.0, f"a CPU quota of {cores:.2f} cores in {where}; {BUSY_POLL_ENV} overrides"
            )
        return BusyPollSetting(DEFAULT_WINDOW_US / 1e6, f"{BUSY_POLL_ENV} unset, no CPU quota")
    if not raw.isdigit() or int(raw) > MAX_WINDOW_US:
        raise ValueError(
            f"{BUSY_POLL_ENV}={raw!r}: expected a whole number of microseconds from 0 "
            f"(off) to {MAX_WINDOW_US}"
        )
    return BusyPollSetting(int(raw) / 1e6, f"{BUSY_POLL_ENV}={int(raw)}")
