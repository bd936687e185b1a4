"""Prometheus metrics of one gateway process, on its own registry.

The two series every request touches (``gateway_requests_total`` and the latency
histogram) are plain counters in dicts, read by a collector at scrape time: the
``prometheus_client`` children take a mutex per increment, and the gateway counts from its
one event-loop thread (the admin listener's scrape runs on that loop too). The rest are
ordinary ``prometheus_client`` metrics.

==========================================  =================================================
gateway_requests_total                      route, backend, method, status class (2xx … 5xx)
gateway_request_duration_seconds            histogram by route, backend
gateway_upstream_errors_total               route, upstream, stage (connect, request, …)
gateway_websockets_open                     gauge by route, backend
gateway_route_new_percent                   gauge by route
gateway_force_token_rejected_total          reason (malformed, bad_signature, expired, …)
gateway_bad_requests_total                  reason (bad_path, body_too_large, no_route)
gateway_gc_threshold                        gauge by generation (gateway.gc_tuning)
gateway_gc_frozen_objects                   gauge: the start-up heap the collector skips
gateway_busy_poll_seconds_total             time polling instead of sleeping (gateway.busypoll)
gateway_busy_poll_window_seconds            gauge: the adaptive polling window now (0: off)
python_gc_collections_total                 prometheus_client's, by generation (and _objects_*)
==========================================  =================================================
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .busypoll import BusyPollCollector
from .gc_tuning import GcCollector

# `*_created` series double the output and nothing here reads them.
disable_created_metrics()

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

# Buckets around the migration guide's p95 < 100 ms target, up to the AI timeouts.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._requests = _RequestCounts()
        r.register(self._requests)
        # observe(route, backend, method, status, seconds): count one answered request and
        # its duration (no locks; see the module doc); the collector's own method, as the
        # gateway calls it for every request
        self.observe: Callable[[str, str, str, int, float], None] = self._requests.observe

        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by the stage they happened in",
            ["route", "upstream", "stage"], registry=r,
        )  # fmt: skip
        self.websockets_open = Gauge(
            "gateway_websockets_open",
            "Open WebSocket connections",
            ["route", "backend"],
            registry=r,
        )
        self.new_percent = Gauge(
            "gateway_route_new_percent", "Share of keys sent to the new side", ["route"], registry=r
        )
        self.force_rejected = Counter(
            "gateway_force_token_rejected", "Force-side headers ignored", ["reason"], registry=r
        )
        self.bad_requests = Counter(
            "gateway_bad_requests", "Requests refused before routing", ["reason"], registry=r
        )
        # the collector's work (python_gc_*) and what it runs with (gateway_gc_*)
        GCCollector(registry=r)
        r.register(GcCollector())
        r.register(BusyPollCollector())

    def before_collect(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` before a scrape reads the request counts (the gateway counts in
        batches: Gateway.flush_records)."""
        self._requests.before_collect = fn


class _Series:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; +Inf
        self.count = 0
        self.total = 0.0


class _RequestCounts(Collector):
    """``gateway_requests_total`` and ``gateway_request_duration_seconds``."""

    def __init__(self) -> None:
        self.before_collect: Callable[[], object] | None = None
        self._counts: dict[tuple[str, str, str, int], int] = {}
        self._series: dict[tuple[str, str], _Series] = {}

    def observe(self, route: str, backend: str, method: str, status: int, seconds: float) -> None:
        key = (route, backend, method, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        series = self._series.get((route, backend))
        if series is None:
            series = self._series[(route, backend)] = _Series()
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.count += 1
        series.total += seconds

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no duplicate-name check against the registry's other metrics

    def collect(self) -> Iterator[Metric]:
        if self.before_collect is not None:
            self.before_collect()
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by route, backend, method and status class",
            labels=["route", "backend", "method", "status"],
        )
        merged: dict[tuple[str, str, str, str], int] = {}
        for (route, backend, method, status), n in list(self._counts.items()):
            m = method if method in _METHODS else "OTHER"
            cls = _STATUS_CLASS.get(status // 100, "other")
            key = (route, backend, m, cls)
            merged[key] = merged.get(key, 0) + n
        for labels, n in merged.items():
            requests.add_metric(list(labels), n)
        yield requests
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time to the end of the response",
            labels=["route", "backend"],
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for (route, backend), series in list(self._series.items()):
            running = 0
            buckets = []
            for bound, n in zip(bounds, series.buckets, strict=True):
                running += n
                buckets.append((bound, running))
            duration.add_metric([route, backend], buckets, series.total)
        yield duration
