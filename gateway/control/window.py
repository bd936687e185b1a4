"""Sliding-window request figures per (route, side): req/s, 5xx share, p95 latency.

Fed by :meth:`gateway.app.Gateway._done` with one :meth:`Window.record` call per request,
read by ``chatgw status``, the admin API and the guard. ``record`` is O(1): a ring of
per-second slots per series (count, 5xx count, a fixed-bucket latency histogram), and a
slot is zeroed lazily when its second comes round again (one small allocation per
series per second, none per request).

Example::

    window = Window(seconds=60)
    window.record("sessions", "new", 200, 0.012)
    window.stats("sessions", "new")   # Stats(requests=1, rps=0.0167, error_rate=0.0, p95=0.0125)
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

# Upper bounds in seconds (log-spaced, ~25 % apart below 1 s): a p95 read from them is
# off by at most one bucket, finer than the Prometheus histogram around the 100 ms target.
BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0065, 0.008, 0.01, 0.0125, 0.015,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.65, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, float("inf"),
)  # fmt: skip


@dataclass(frozen=True)
class Stats:
    """Figures of one (route, side) over the window (``p95`` is None without traffic)."""

    requests: int
    errors: int
    seconds: int
    p95: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 3),
            "error_rate": round(self.error_rate, 5),
            "p95_ms": None if self.p95 is None else round(self.p95 * 1000, 2),
        }


class _Series:
    __slots__ = ("counts", "errors", "hist", "stamp")

    def __init__(self, n: int) -> None:
        self.stamp = [-1] * n  # the second each slot currently holds
        self.counts = [0] * n
        self.errors = [0] * n
        self.hist = [[0] * len(BOUNDS) for _ in range(n)]


class Window:
    """Per (route, side) figures over the last ``seconds`` seconds, 1-second slots."""

    def __init__(self, seconds: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._series: dict[tuple[str, str], _Series] = {}
        # Called before every read: the gateway records in batches (Gateway.flush_records).
        self.before_read: Callable[[], None] | None = None

    def now(self) -> float:
        """The window's clock (``at`` of :meth:`record` is on it)."""
        return self._clock()

    def record(
        self, route: str, side: str, status: int, seconds: float, *, at: float | None = None
    ) -> None:
        """Count one request that ended at ``at`` on :meth:`now`'s clock (default: now)."""
        key = (route, side)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.seconds)
        now = int(self._clock() if at is None else at)
        i = now % self.seconds
        if series.stamp[i] != now:
            series.stamp[i] = now
            series.counts[i] = 0
            series.errors[i] = 0
            series.hist[i] = [0] * len(BOUNDS)
        series.counts[i] += 1
        if status >= 500:
            series.errors[i] += 1
        series.hist[i][bisect_left(BOUNDS, seconds)] += 1

    def stats(self, route: str, side: str, seconds: int | None = None) -> Stats:
        """Figures over the last ``seconds`` (default: the whole window) complete or not."""
        if self.before_read is not None:
            self.before_read()
        span = min(seconds or self.seconds, self.seconds)
        series = self._series.get((route, side))
        if series is None:
            return Stats(0, 0, span, None)
        now = int(self._clock())
        total = errors = 0
        hist = [0] * len(BOUNDS)
        for i in range(self.seconds):
            if now - span < series.stamp[i] <= now:
                total += series.counts[i]
                errors += series.errors[i]
                for b, n in enumerate(series.hist[i]):
                    if n:
                        hist[b] += n
        return Stats(total, errors, span, _quantile(hist, total, 0.95))


def _quantile(hist: list[int], total: int, q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (the last finite one for +Inf)."""
    if not total:
        return None
    rank = q * total
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return BOUNDS[b] if b < len(BOUNDS) - 1 else BOUNDS[-2]
    return BOUNDS[-2]
