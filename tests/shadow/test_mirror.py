"""Live shadowing through a real gateway process (legacy primary, module compared)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from shadow_helpers import ADMIN_TOKEN, ShadowGateway, routes_text

EXACT = "{percent: 100, compare: {normalise: [timestamp], ignore: ['$.nonce']}}"

Make = Callable[..., ShadowGateway]


def _metric(gw: ShadowGateway, result: str, route: str = "items") -> float:
    text = httpx.get(gw.admin + "/metrics", trust_env=False).text
    for line in text.splitlines():
        if line.startswith(f'gateway_shadow_results_total{{result="{result}",route="{route}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_shadow_at_100_percent_counts_matches(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT))
    with gw.client() as c:
        for i in range(20):
            assert c.get(f"/api/items/{i}").status_code == 200
    counts = gw.wait_counts(20)
    assert counts["match"] == 20, counts
    status = gw.api("/api/shadow")["routes"]["items"]
    assert status["match_rate"] == 1.0
    assert status["mismatch_rate"] == 0.0  # 20 compared: enough for the guard
    assert _metric(gw, "match") == 20


def test_deliberate_incompatibility_counted_and_sampled(
    shadow_gateway: Make, test_upstream: str
) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT), SHADOW_TEST_BREAK="1")
    with gw.client() as c:
        r = c.get("/api/items/7", headers={"Authorization": "Bearer secret-token"})
        assert r.json()["name"] == "item-7"  # the client sees legacy's answer
    counts = gw.wait_counts(1)
    assert counts["mismatch"] == 1, counts
    sample = gw.api("/api/shadow/samples?route=items")["data"][0]
    assert [d["path"] for d in sample["differences"]] == ["$.name"]
    assert sample["differences"][0] == {"path": "$.name", "primary": "item-7", "shadow": "ITEM-7"}


def test_noise_marks_random_field_noisy(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(
        routes_text(test_upstream, "{percent: 100, compare: {normalise: [timestamp], noise: true}}")
    )
    with gw.client() as c:
        for i in range(5):
            c.get(f"/api/items/{i}")
    counts = gw.wait_counts(5)
    assert counts["match"] == 5, counts  # nonce differs on every call: noise, not a mismatch


def test_sse_stream_compared_reassembled(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT))
    with gw.client() as c:
        assert "Hel" in c.get("/api/stream").text
    assert gw.wait_counts(1)["match"] == 1


def test_samples_redacted_authorization_cookie_and_fields(
    shadow_gateway: Make, test_upstream: str
) -> None:
    shadow = (
        "{percent: 100, compare: {normalise: [timestamp], ignore: ['$.nonce'], redact: [password]}}"
    )
    gw = shadow_gateway(routes_text(test_upstream, shadow), SHADOW_TEST_BREAK="1")
    with gw.client() as c:
        c.get(
            "/api/items/1?token=jwt-in-query",
            headers={"Authorization": "Bearer top-secret", "Cookie": "sid=top-secret"},
        )
    gw.wait_counts(1)
    sample = gw.api("/api/shadow/samples")["data"][0]
    text = str(sample)
    assert "top-secret" not in text and "hunter2" not in text and "jwt-in-query" not in text
    headers = dict(sample["request"]["headers"])
    assert headers["authorization"] == "[redacted]" and headers["cookie"] == "[redacted]"
    assert '"password":"[redacted]"' in sample["primary"]["body"]


def test_unsafe_method_not_mirrored_by_default(shadow_gateway: Make, test_upstream: str) -> None:
    shadow = "{percent: 100, methods: [GET]}"
    gw = shadow_gateway(routes_text(test_upstream, shadow))
    with gw.client() as c:
        before = c.get("/api/writes").json()["writes"]
        for _ in range(3):
            assert c.post("/api/items", json={"a": 1}).status_code == 201
        after = c.get("/api/writes").json()["writes"]
    assert after - before == 3
    time.sleep(0.3)
    assert gw.counts().get("match", 0) + gw.counts().get("mismatch", 0) == 2  # the two GETs


def test_unsafe_method_in_shadow_methods_without_dry_run_refused(
    shadow_gateway: Make, test_upstream: str, tmp_path: Any
) -> None:
    import subprocess
    import sys

    from gateway_process import ROOT

    cfg = tmp_path / "r.yaml"
    cfg.write_text(routes_text(test_upstream, "{percent: 100, methods: [GET, POST]}"))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": ROOT,
            "CHATGW_EXTRA_MODULES": "shadowtest=tests.shadow.shadow_apps:create_module",
            "PATH": "",
        },
    )
    assert proc.returncode == 1
    assert "routes[0].shadow.methods: POST is not a safe method" in proc.stderr
    assert "set dry_run: true" in proc.stderr


def test_marker_stripped_from_client_request(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, "{percent: 0}"))
    with gw.client() as c:
        seen = c.get("/api/headers", headers={"X-Gateway-Shadow": "dry-run"}).json()
    assert seen["side"] == "legacy"
    assert "x-gateway-shadow" not in seen["headers"]


def test_marker_on_request_is_loop_not_mirrored(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT))
    with gw.client() as c:
        for i in range(3):
            assert c.get(f"/api/items/{i}", headers={"x-gateway-shadow": "1"}).status_code == 200
        c.get("/api/items/99")  # a normal one, to know the workers ran
    counts = gw.wait_counts(1)
    time.sleep(0.3)
    assert sum(gw.counts().values()) == 1, counts
    metrics = httpx.get(gw.admin + "/metrics", trust_env=False).text
    assert 'gateway_shadow_loops_refused_total{route="items"} 3.0' in metrics


def test_shadow_copy_carries_marker(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, "{percent: 100}"))
    with gw.client() as c:
        c.get("/api/headers")
    gw.wait_counts(1)
    sample = gw.api("/api/shadow/samples")["data"][0]  # the header echo differs by "side"
    paths = {d["path"]: d for d in sample["differences"]}
    assert paths["$.headers.x-gateway-shadow"]["shadow"] == "1"


def test_body_over_max_counted_too_large(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, "{percent: 100, max_body: 4KiB}"))
    with gw.client() as c:
        r = c.get("/api/big?n=10000")
        assert r.status_code == 200 and len(r.content) > 10000  # the client gets it all
        c.get("/api/big?n=100")
    counts = gw.wait_counts(2)
    assert counts["too_large"] == 1 and counts["match"] == 1, counts


def test_slow_shadow_side_does_not_slow_primary(shadow_gateway: Make, test_upstream: str) -> None:
    settings = "  shadow: {queue: 10000, workers: 4, timeout: 5s}"
    gw = shadow_gateway(
        routes_text(test_upstream, EXACT, settings=settings), SHADOW_TEST_SLOW="0.5"
    )
    with gw.client() as c:
        c.get("/api/items/0")
        times = []
        for i in range(30):
            t0 = time.perf_counter()
            assert c.get(f"/api/items/{i}").status_code == 200
            times.append(time.perf_counter() - t0)
    # every shadow copy takes 500 ms; the client's answers do not wait for them
    assert statistics.median(times) < 0.1, times
    assert max(times) < 0.4, times


def test_full_queue_drops_and_counts(shadow_gateway: Make, test_upstream: str) -> None:
    settings = "  shadow: {queue: 2, workers: 1, timeout: 5s}"
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=settings), SHADOW_TEST_SLOW="1")
    with gw.client() as c:
        for i in range(10):
            assert c.get(f"/api/items/{i}").status_code == 200
    time.sleep(0.2)
    counts = gw.counts()
    # one copy in the worker, two waiting in the queue, the rest dropped
    assert counts["dropped"] >= 6, counts
    assert _metric(gw, "dropped") == counts["dropped"]


def test_shadow_timeout_counted_error(shadow_gateway: Make, test_upstream: str) -> None:
    settings = "  shadow: {timeout: 200ms}"
    gw = shadow_gateway(routes_text(test_upstream, EXACT, settings=settings), SHADOW_TEST_SLOW="1")
    with gw.client() as c:
        c.get("/api/items/1")
    assert gw.wait_counts(1)["error"] == 1


def test_shadow_api_needs_token(shadow_gateway: Make, test_upstream: str) -> None:
    gw = shadow_gateway(routes_text(test_upstream, EXACT))
    assert httpx.get(gw.admin + "/api/shadow", trust_env=False).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(gw.admin + "/api/shadow", headers=wrong, trust_env=False).status_code == 401
    ok = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(gw.admin + "/api/shadow", headers=ok, trust_env=False).status_code == 200
