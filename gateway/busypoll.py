"""Busy polling while one request at a time comes in: the loop polls instead of sleeping.

Off unless ``CHATGW_BUSY_POLL_US`` is set (microseconds, 1..10 000; ``300`` suits a
loopback or same-rack upstream). When a client's bytes arrive and no request is being
served, the event loop keeps polling its sockets with a zero timeout (``epoll_wait(…, 0)``)
for that long instead of blocking. The upstream's answer to that request, and the
client's next request on a keep-alive connection, then find the process running instead of
asleep.

Why: on a virtual machine whose idle vCPU halts at once (``cpuidle`` driver ``haltpoll``
with ``guest_halt_poll_ns`` 0, as on the bench VMs) waking a sleeping process costs an exit
to the hypervisor and back, and a proxied request at one connection sleeps twice (waiting
for the upstream, then for the client's next request). On the bench VM the gateway's added
p50 at one connection went from +190 to +78 µs (``bench/README.md``).

The price is CPU, so it is an operator's choice: up to the window after each request that
arrives at an idle gateway, a whole core while requests come one at a time just within
it. Do not turn it on under a CPU quota (a container's ``cpu`` limit): the spinning is
charged to the quota. With requests in flight it never starts (the loop has work, and
spinning would only take CPU from the processes whose answers it waits for: measured on
two shared cores, throughput at 50 connections is unchanged). It is the user-space form
of Linux's ``net.core.busy_poll`` and of a guest's halt-polling.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Iterator, Mapping
from time import perf_counter

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

BUSY_POLL_ENV = "CHATGW_BUSY_POLL_US"
MAX_WINDOW_US = 10_000


class BusyPoll:
    """One per server and loop. :meth:`poke` on client traffic while :attr:`in_flight` is
    0 keeps the loop polling for ``window`` seconds from then."""

    __slots__ = (
        "__weakref__", "_call_soon", "_since", "_until", "_window", "in_flight", "loop",
        "polled", "running",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self.loop = loop
        self._call_soon = loop.call_soon
        self._window = window
        self._until = 0.0
        self._since = 0.0
        #: Polling now (a :meth:`_spin` callback is scheduled).
        self.running = False
        #: Requests being served, counted by gateway.http11's protocol.
        self.in_flight = 0
        #: Seconds spent polling, finished spells only (``gateway_busy_poll_seconds_total``).
        self.polled = 0.0
        _POLLS.add(self)

    def poke(self) -> None:
        now = perf_counter()
        self._until = now + self._window
        if not self.running:
            self.running = True
            self._since = now
            self._call_soon(self._spin)

    def _spin(self) -> None:
        # A ready callback makes the loop poll with a zero timeout before running it again.
        now = perf_counter()
        if now < self._until:
            self._call_soon(self._spin)
        else:
            self.running = False
            self.polled += now - self._since


_POLLS: weakref.WeakSet[BusyPoll] = weakref.WeakSet()


class BusyPollCollector(Collector):
    """``gateway_busy_poll_seconds_total``: the time this process's loops spent polling
    instead of sleeping (0 when ``CHATGW_BUSY_POLL_US`` is off), read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "gateway_busy_poll_seconds",
            "Time the event loop spent polling instead of sleeping (CHATGW_BUSY_POLL_US)",
            value=sum(p.polled for p in list(_POLLS)),
        )


def window_from_env(env: Mapping[str, str] | None = None) -> float:
    """``CHATGW_BUSY_POLL_US`` in seconds (unset or 0: off).

    Raises ValueError with the variable, its value and the reason when it is malformed.
    """
    raw = (os.environ if env is None else env).get(BUSY_POLL_ENV, "").strip()
    if not raw:
        return 0.0
    if not raw.isdigit() or int(raw) > MAX_WINDOW_US:
        raise ValueError(
            f"{BUSY_POLL_ENV}={raw!r}: expected a whole number of microseconds from 0 "
            f"(off) to {MAX_WINDOW_US}"
        )
    return int(raw) / 1e6
