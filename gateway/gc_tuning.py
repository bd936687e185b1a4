"""The serving process's garbage collector: the start-up heap frozen, a larger young generation.

CPython collects its youngest generation whenever GC-tracked allocations outnumber
deallocations by 700 since the last collection. A gateway at 50 concurrent requests keeps
about that many objects of requests in flight (scopes, tasks, coroutines, futures), so
with the default thresholds it collected every ~20 requests. Each collection promoted
those live objects a generation up, so full collections followed three times a second, and
each one walked the whole start-up heap (~50 000 objects of routes, modules and imported
code) for ~25 ms. Measured on the session GET under ``wrk -c50`` with ``gc.callbacks``
(bench/README.md, "Garbage collection"): 18 µs of CPU per request went to the collector,
more than the gateway's own routing and bookkeeping. With the start-up heap frozen and the
young generation at 10 000 it is under 1 µs: refcounting frees a request's objects, so
the collector only runs when something does pile up.

``CHATGW_GC_THRESHOLD`` sets the thresholds as ``gc.set_threshold`` takes them (one to
three integers, comma-separated; ``0`` first turns automatic collection off). It defaults
to ``10000,10,10``. ``python`` keeps CPython's own thresholds and does not freeze anything.

:func:`freeze_startup_heap` runs once the gateway has started (modules, pools and the
control plane are up): one full collection, then ``gc.freeze()``. The frozen objects are
never scanned again. Start-up objects that are replaced later (the first route table after
a reload) and form reference cycles are never collected. That is one copy of the start-up
state, once per process.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

GC_ENV = "CHATGW_GC_THRESHOLD"
DEFAULT_THRESHOLD = (10_000, 10, 10)
KEEP_PYTHONS = "python"


def gc_threshold(env: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """The thresholds ``CHATGW_GC_THRESHOLD`` asks for, or None for CPython's own.

    Raises ValueError with the variable, its value and the reason when it is malformed.
    """
    raw = (os.environ if env is None else env).get(GC_ENV, "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    if raw == KEEP_PYTHONS:
        return None
    parts = [p.strip() for p in raw.split(",")]
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"{GC_ENV}={raw!r}: expected one to three non-negative integers "
            f"(gen0[,gen1[,gen2]], as gc.set_threshold takes them) or {KEEP_PYTHONS!r}"
        )
    return tuple(int(p) for p in parts)


def apply_gc_threshold(threshold: tuple[int, ...] | None) -> None:
    """Set the collector's thresholds (None: leave CPython's)."""
    if threshold is not None:
        gc.set_threshold(*threshold)


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now to the permanent generation.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcCollector(Collector):
    """``gateway_gc_threshold{generation}`` and ``gateway_gc_frozen_objects``: what the
    process runs with, read at scrape time (prometheus_client's own GC collector gives
    the collections and what they freed)."""

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        threshold = GaugeMetricFamily(
            "gateway_gc_threshold",
            "The garbage collector's threshold per generation (CHATGW_GC_THRESHOLD)",
            labels=["generation"],
        )
        for generation, value in enumerate(gc.get_threshold()):
            threshold.add_metric([str(generation)], value)
        yield threshold
        yield GaugeMetricFamily(
            "gateway_gc_frozen_objects",
            "Objects of the start-up heap the collector no longer scans (gc.freeze)",
            value=gc.get_freeze_count(),
        )
