"""gateway.metrics after known traffic on a fresh gateway (parsed with prometheus_client)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gw_helpers import GatewayProc, Upstreams, main_config, metric, spawn_gateway
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

TRAFFIC = {
    ("echo", "legacy", "GET", "2xx"): 3,
    ("echo", "legacy", "POST", "2xx"): 2,
    ("conflict", "legacy", "GET", "4xx"): 1,
    ("probe", "new", "GET", "2xx"): 4,
    ("refused", "legacy", "GET", "5xx"): 2,
    ("slow", "legacy", "GET", "5xx"): 1,
    ("-", "gateway", "GET", "4xx"): 2,  # unknown path (404) and path trick (400)
}


@pytest.fixture(scope="module")
def fresh(
    upstreams: Upstreams, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProc, str]]:
    """A gateway that served exactly TRAFFIC (plus one WebSocket), and its /metrics."""
    g = spawn_gateway(main_config(upstreams, dead_port), tmp_path_factory.mktemp("metrics"))
    try:
        with g.client() as c:
            for _ in range(3):
                assert c.get("/echo/m").status_code == 200
            for _ in range(2):
                assert c.post("/echo/m", content=b"body").status_code == 200
            assert c.get("/conflict").status_code == 409
            for _ in range(4):
                assert c.get("/probe/m").status_code == 200
            for _ in range(2):
                assert c.get("/refused/m").status_code == 502
            assert c.get("/slow", params={"ms": 3000}).status_code == 504
            assert c.get("/no/such/route").status_code == 404
        with httpx.Client(trust_env=False) as raw:  # a dot segment: 400 before routing
            assert raw.get(g.url + "/echo/%2e%2e/x").status_code == 400
        with connect(g.ws_url + "/ws", proxy=None) as ws:
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            open_during = metric(g.metrics(), "gateway_websockets_open", route="ws")
        text = g.metrics()
        yield g, text + f"\n# websockets open while connected: {open_during}\n"
    finally:
        g.stop()


def _open_during(text: str) -> float:
    return float(text.rsplit("connected: ", 1)[1])


def test_requests_total_counts_by_route_backend_method_and_status_class(fresh):
    _, text = fresh
    for (route, backend, method, status), n in TRAFFIC.items():
        got = metric(
            text,
            "gateway_requests_total",
            route=route,
            backend=backend,
            method=method,
            status=status,
        )
        assert got == n, (route, backend, method, status)
    http_total = metric(text, "gateway_requests_total") - metric(
        text, "gateway_requests_total", route="ws"
    )
    assert http_total == sum(TRAFFIC.values())


def test_latency_histogram_counts_every_request(fresh):
    _, text = fresh
    name = "gateway_request_duration_seconds_count"
    assert metric(text, name, route="echo", backend="legacy") == 5
    assert metric(text, name, route="probe", backend="new") == 4
    assert metric(text, name, route="refused", backend="legacy") == 2
    # The 504 waited for the 1 s route timeout: well above the 0.5 s bucket (the timer
    # itself has millisecond resolution, so the 1 s edge is not a stable boundary).
    half = metric(text, "gateway_request_duration_seconds_bucket", route="slow", le="0.5")
    inf = metric(text, "gateway_request_duration_seconds_bucket", route="slow", le="+Inf")
    assert (half, inf) == (0, 1)


def test_upstream_errors_are_counted_by_stage(fresh):
    _, text = fresh
    name = "gateway_upstream_errors_total"
    assert metric(text, name, route="refused", upstream="dead", stage="connect") == 2
    assert metric(text, name, route="slow", upstream="a", stage="response") == 1
    assert metric(text, name, route="echo") == 0


def test_websockets_open_goes_back_to_zero(fresh):
    g, text = fresh
    assert _open_during(text) == 1
    assert metric(g.metrics(), "gateway_websockets_open", route="ws", backend="legacy") == 0
    assert metric(text, "gateway_requests_total", route="ws", backend="legacy", status="1xx") == 1


def test_new_percent_is_published_per_route(fresh):
    _, text = fresh
    name = "gateway_route_new_percent"
    assert metric(text, name, route="split") == 50
    assert metric(text, name, route="probe") == 100
    assert metric(text, name, route="forced") == 0
    assert metric(text, name, route="echo") == 0


def test_bad_requests_are_counted_by_reason(fresh):
    _, text = fresh
    assert metric(text, "gateway_bad_requests_total", reason="no_route") == 1
    assert metric(text, "gateway_bad_requests_total", reason="bad_path") == 1


def test_lock_free_counts_expose_what_prometheus_client_would() -> None:
    """The hot-path collector against prometheus_client's own Counter and Histogram fed the
    same observations: the same series, labels and values in the exposition."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from gateway.metrics import LATENCY_BUCKETS, Metrics

    ours = Metrics()
    ref_registry = CollectorRegistry()
    ref_requests = Counter(
        "gateway_requests", "Requests answered, by route, backend, method and status class",
        ["route", "backend", "method", "status"], registry=ref_registry,
    )  # fmt: skip
    ref_duration = Histogram(
        "gateway_request_duration_seconds", "Time to the end of the response",
        ["route", "backend"], buckets=LATENCY_BUCKETS, registry=ref_registry,
    )  # fmt: skip
    samples = [("a", "new", "GET", 200, 0.0004), ("a", "new", "GET", 201, 0.001),
               ("a", "legacy", "BREW", 503, 0.3), ("b", "new", "POST", 404, 75.0),
               ("a", "new", "GET", 204, 0.0025), ("b", "gateway", "GET", 999, 0.05)]  # fmt: skip
    for route, backend, method, status, seconds in samples:
        ours.observe(route, backend, method, status, seconds)
        m = method if method in {"GET", "POST"} else "OTHER"
        cls = {2: "2xx", 4: "4xx", 5: "5xx"}.get(status // 100, "other")
        ref_requests.labels(route, backend, m, cls).inc()
        ref_duration.labels(route, backend).observe(seconds)

    def series(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for fam in text_string_to_metric_families(text.decode()):
            if fam.name.startswith(("gateway_requests", "gateway_request_duration")):
                for s in fam.samples:
                    out[(s.name, frozenset(s.labels.items()))] = round(s.value, 9)
        return out

    got, want = series(generate_latest(ours.registry)), series(generate_latest(ref_registry))
    assert got == want
    assert got[("gateway_requests_total", frozenset({("route", "a"), ("backend", "new"),
                ("method", "GET"), ("status", "2xx")}))] == 3  # fmt: skip
