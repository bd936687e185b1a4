"""Prometheus metrics of one gateway process, on its own registry.

Label children are cached per label tuple: ``labels()`` does a dict lookup plus a lock,
and the hot path calls it several times per request.

==========================================  =================================================
gateway_requests_total                      route, backend, method, status class (2xx … 5xx)
gateway_request_duration_seconds            histogram by route, backend
gateway_upstream_errors_total               route, upstream, stage (connect, request, …)
gateway_websockets_open                     gauge by route, backend
gateway_route_new_percent                   gauge by route
gateway_force_token_rejected_total          reason (malformed, bad_signature, expired, …)
gateway_bad_requests_total                  reason (bad_path, body_too_large, no_route)
==========================================  =================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

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
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, backend, method and status class",
            ["route", "backend", "method", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time to the end of the response",
            ["route", "backend"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
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
        self._req: dict[tuple[str, str, str, int], Any] = {}
        self._dur: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, backend: str, method: str, status: int, seconds: float) -> None:
        key = (route, backend, method, status)
        child = self._req.get(key)
        if child is None:
            m = method if method in _METHODS else "OTHER"
            cls = _STATUS_CLASS.get(status // 100, "other")
            child = self._req[key] = self.requests.labels(route, backend, m, cls)
        child.inc()
        dkey = (route, backend)
        hist = self._dur.get(dkey)
        if hist is None:
            hist = self._dur[dkey] = self.duration.labels(route, backend)
        hist.observe(seconds)
