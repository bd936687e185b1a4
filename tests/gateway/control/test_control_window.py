"""The sliding window behind ``chatgw status`` and the guard."""

from __future__ import annotations

from gateway.control.window import Window


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_errors_and_p95_over_the_window() -> None:
    clock = Clock()
    w = Window(seconds=10, clock=clock)
    for i in range(100):
        w.record("r", "new", 502 if i < 7 else 200, 0.004 if i < 90 else 0.2)
    s = w.stats("r", "new")
    assert (s.requests, s.errors, s.rps, round(s.error_rate, 2)) == (100, 7, 10.0, 0.07)
    assert s.p95 == 0.2
    assert w.stats("r", "legacy").requests == 0 and w.stats("r", "legacy").p95 is None


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    w = Window(seconds=5, clock=clock)
    w.record("r", "new", 500, 0.01)
    clock.now += 3
    w.record("r", "new", 200, 0.01)
    assert w.stats("r", "new").requests == 2
    assert w.stats("r", "new", seconds=2).requests == 1  # only the last 2 s
    clock.now += 3  # the first second is now 6 s old
    assert (w.stats("r", "new").requests, w.stats("r", "new").errors) == (1, 0)
    clock.now += 5  # a slot is reused for a new second: its old counts are gone
    w.record("r", "new", 200, 0.01)
    assert w.stats("r", "new").requests == 1


def test_slowest_bucket_reports_the_last_finite_bound() -> None:
    w = Window(seconds=2)
    w.record("r", "legacy", 200, 500.0)
    assert w.stats("r", "legacy").p95 == 60.0
