"""The guard: verdicts (pure), routes.yaml validation, and real replicas rolled back within
5 s of an injected failure, a WebSocket crash counted, a webhook posted and a ramp stopped."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_helpers import api, percent, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from gateway.app import Gateway
from gateway.config import Guard as GuardConfig
from gateway.config import parse_config
from gateway.control.guard import Guard, evaluate
from gateway.control.plane import ControlPlane
from gateway.control.window import Stats
from gateway.errors import ConfigError

HERE = Path(__file__).resolve().parent
Replicas = Callable[..., list[Any]]


# --------------------------------------------------------------------------- verdicts


def test_fewer_requests_than_minimum_not_judged() -> None:
    v = evaluate(GuardConfig(min_requests=20), Stats(requests=19, errors=19, seconds=30, p95=9.0))
    assert v.ok and not v.judged and "19 of 20" in v.reason


def test_error_rate_above_threshold_breaches_with_figures() -> None:
    v = evaluate(GuardConfig(), Stats(requests=1000, errors=2, seconds=30, p95=0.02))
    assert not v.ok and v.judged
    assert v.reason == "error rate 0.2 % > 0.1 % (2 of 1000 requests in 30 s)"
    assert v.figures["errors"] == 2 and v.figures["requests"] == 1000
    assert v.figures["max_error_rate"] == 0.001


def test_error_rate_at_threshold_and_fast_is_green() -> None:
    v = evaluate(GuardConfig(), Stats(requests=1000, errors=1, seconds=30, p95=0.1))
    assert v.ok and v.judged and v.reason == "green"


def test_p95_above_threshold_breaches_but_not_on_websocket_routes() -> None:
    stats = Stats(requests=50, errors=0, seconds=30, p95=0.125)
    assert evaluate(GuardConfig(), stats).reason == "p95 125 ms > 100 ms"
    assert evaluate(GuardConfig(), stats, websocket=True).ok  # a session's length


def test_both_breaches_named_and_disabled_guard_never_breaches() -> None:
    stats = Stats(requests=40, errors=20, seconds=10, p95=1.0)
    v = evaluate(GuardConfig(p95=0.5), stats)
    assert "error rate 50 % > 0.1 %" in v.reason and "p95 1000 ms > 500 ms" in v.reason
    assert evaluate(GuardConfig(enabled=False), stats).ok


def test_shadow_mismatch_judged_only_when_configured() -> None:
    stats = Stats(requests=40, errors=0, seconds=10, p95=0.01)
    assert evaluate(GuardConfig(), stats, mismatch=0.5).ok
    v = evaluate(GuardConfig(mismatch_rate=0.05), stats, mismatch=0.1)
    assert not v.ok and v.reason == "shadow mismatch 10 % > 5 %"


# --------------------------------------------------------------------------- config

ROUTES = """\
upstreams:
  a: {url: "http://127.0.0.1:9"}
defaults:
  guard: {error_rate: 1%, min_requests: 5}
routes:
  - name: one
    match: {prefix: /one}
    legacy: a
    module: probe
    guard: {p95: 2s, window: 10s}
  - name: two
    match: {prefix: /two}
    legacy: a
    module: probe
"""


def test_guard_defaults_and_route_overrides_parsed() -> None:
    cfg = parse_config(ROUTES, env={}, known_modules=["probe"])
    one, two = cfg.routes
    assert one.guard == GuardConfig(error_rate=0.01, p95=2.0, min_requests=5, window=10.0)
    assert two.guard == GuardConfig(error_rate=0.01, min_requests=5)


def test_bad_guard_values_each_reported_with_line_and_fix() -> None:
    bad = ROUTES.replace("{p95: 2s, window: 10s}",
                         "{p95: fast, window: 5m, min_requests: 0, error_rte: 1%, enabled: 1}")  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        parse_config(bad, env={}, known_modules=["probe"])
    text = str(exc.value)
    assert "routes.yaml:10 routes[0].guard.p95: 'fast' is not a duration like 100ms" in text
    assert "routes[0].guard.window: '5m' is not a duration from 1s to 60s" in text
    assert "routes[0].guard.min_requests: 0 is not a whole number of at least 1" in text
    assert "unknown key 'error_rte': did you mean 'error_rate'?" in text
    assert "routes[0].guard.enabled: 1 must be true or false" in text


def test_ramp_hook_answers_no_with_the_guard_reason(tmp_path: Path) -> None:
    cfg = parse_config(ROUTES, env={}, known_modules=["probe"])
    gateway = Gateway(cfg, env={})
    plane = ControlPlane(gateway, "routes.yaml", env={"CHATGW_STATE_DIR": str(tmp_path)})
    guard = Guard(plane, env={})
    plane.ramp_may_advance = guard.ok
    for i in range(10):
        gateway.window.record("one", "new", 500 if i < 2 else 200, 0.01)
    ok, why = asyncio_run(plane.may_advance("one"))
    assert not ok and why == "guard: error rate 20 % > 1 % (2 of 10 requests in 10 s)"
    assert asyncio_run(plane.may_advance("two")) == (True, "")  # no traffic: not judged


def test_guard_turned_off_by_env_never_vetoes(tmp_path: Path) -> None:
    cfg = parse_config(ROUTES, env={}, known_modules=["probe"])
    gateway = Gateway(cfg, env={})
    plane = ControlPlane(gateway, "routes.yaml", env={"CHATGW_STATE_DIR": str(tmp_path)})
    guard = Guard(plane, env={"CHATGW_GUARD": "off"})
    gateway.set_weight("one", 10_000)
    for _ in range(10):
        gateway.window.record("one", "new", 500, 0.01)
    assert guard.ok("one") == (True, "") and guard.view()["one"]["state"] == "off"
    assert asyncio_run(guard.check()) == []  # the checker does not act either
    assert gateway.table.basis(cfg.routes[0]) == 10_000


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


# --------------------------------------------------------------------------- real replicas


def _config(ws: bool = False, **guard: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "flaky", "match": {"prefix": "/flaky"}, "legacy": "a",
                             "module": "flaky", "new_percent": 100, "sticky": "none"}  # fmt: skip
    if ws:
        route["match"] = {"path": "/ws", "websocket": True}
    if guard:
        route["guard"] = guard
    return {
        "upstreams": {"a": {"url": "http://127.0.0.1:9", "connect_timeout": "1s"}},
        "routes": [route],
    }


@pytest.fixture
def flaky(replicas: Replicas, tmp_path: Path) -> Iterator[tuple[Callable[..., list[Any]], Path]]:
    fault = tmp_path / "fault"
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(HERE.parent.parent.parent), str(HERE.parent), str(HERE)]
        ),
        "CHATGW_EXTRA_MODULES": "probe=sample_modules:create_probe,flaky=guard_modules:create_flaky",
        "CHATGW_FLAKY_FILE": str(fault),
        "CHATGW_GUARD_INTERVAL": "0.5",
    }

    def start(n: int, config: dict[str, Any], **extra: str) -> list[Any]:
        return replicas(n, config, **{**env, **extra})

    yield start, fault


class _Load(threading.Thread):
    """Requests to one gateway back to back, noting when the first 500 came."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.first_failure: float | None = None
        self.statuses: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as c:
            while not self.stop.is_set():
                r = c.get("/flaky/x")
                self.statuses.append(r.status_code)
                if r.status_code == 500 and self.first_failure is None:
                    self.first_failure = time.monotonic()
                time.sleep(0.005)


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length", "0"))
        self.received.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["500", "raise"])
def test_injected_failure_rolled_back_on_every_replica_within_5s(
    flaky: Any, webhook: Any, mode: str
) -> None:
    start, fault = flaky
    hook_url, received = webhook
    a, b = start(1, _config(), GATEWAY_GUARD_WEBHOOK=hook_url)[0], start(1, _config())[0]
    load = _Load(a.url)
    load.start()
    try:
        wait_until(lambda: len(load.statuses) >= 60, timeout=10)  # green traffic first
        assert set(load.statuses) == {200}
        fault.write_text(mode)
        wait_until(lambda: load.first_failure is not None, timeout=5)
        assert load.first_failure is not None
        with api(a.admin_url) as ca, api(b.admin_url) as cb:  # one connection each

            def both_at_zero() -> bool:
                return all(c.get("/api/routes/flaky").json()["percent"] == 0 for c in (ca, cb))

            wait_until(both_at_zero, timeout=8, step=0.01)
        took = time.monotonic() - load.first_failure
    finally:
        load.stop.set()
        load.join()
    print(f"guard rollback on both replicas {took:.3f} s after the first failure ({mode})")
    assert took < 5
    time.sleep(1.2)  # two more checker ticks on each replica: no second entry
    with api(a.admin_url) as c:
        entries = c.get("/api/audit", params={"route": "flaky"}).json()["entries"]
    guard_entries = [e for e in entries if e["source"] == "guard"]
    assert len(guard_entries) == 1, entries
    e = guard_entries[0]
    first500 = min(x["ts"] for x in a.access_lines() if x["status"] == 500)
    with api(b.admin_url) as c:
        applied_b = c.get("/api/version").json()["applied_at"]
    # On the gateways' own clocks (the access log's first 500, the other replica's apply).
    print(f"replica b applied the rollback {applied_b - first500:.3f} s after a's first 500")
    assert applied_b - first500 < 5
    assert e["who"] == "guard" and e["action"] == "rollback"
    assert e["from_percent"] == 100 and e["to_percent"] == 0
    assert "error rate" in e["reason"] and "requests=" in e["reason"] and "errors=" in e["reason"]
    assert 'gateway_guard_rollbacks_total{route="flaky"} 1.0' in a.metrics()
    assert "guard: route flaky new side breached" in a.stderr()
    wait_until(lambda: len(received) == 1, timeout=3)
    body = received[0]
    assert body["event"] == "guard.rollback" and body["route"] == "flaky"
    assert body["figures"]["errors"] >= 1 and "token" not in json.dumps(body).lower()
    with a.client() as c:  # to legacy now (a dead upstream here: 502)
        r = c.get("/flaky/x")
        assert r.headers["x-gateway-backend"] == "legacy"


def test_websocket_module_crashes_counted_and_rolled_back(flaky: Any) -> None:
    start, _ = flaky
    (gw,) = start(1, _config(ws=True, min_requests=5))
    for _ in range(2):
        with connect(gw.ws_url + "/ws") as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
    assert percent(gw.admin_url, "flaky") == 100  # normal closes are not errors
    for _ in range(4):
        with connect(gw.ws_url + "/ws") as ws:
            ws.send("crash")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is None or closed.value.rcvd.code == 1011
    wait_until(lambda: percent(gw.admin_url, "flaky") == 0, timeout=3)
    with api(gw.admin_url) as c:
        (entry,) = [e for e in c.get("/api/audit").json()["entries"] if e["source"] == "guard"]
    assert "error rate 66.7 % > 0.1 % (4 of 6 requests" in entry["reason"]


def test_ramp_stops_at_the_first_breach(flaky: Any) -> None:
    start, fault = flaky
    config = _config(min_requests=5)
    config["routes"][0]["new_percent"] = 0
    (gw,) = start(1, config)
    fault.write_text("500")
    with api(gw.admin_url) as c:
        r = c.post("/api/routes/flaky/ramp",
                   json={"steps": [50, 75, 100], "every": "1s", "reason": "ga"})  # fmt: skip
        assert r.status_code == 201, r.text
    load = _Load(gw.url)
    load.start()
    try:
        wait_until(lambda: percent(gw.admin_url, "flaky") == 0 and load.first_failure is not None,
                   timeout=5)  # fmt: skip
        time.sleep(2.5)  # the ramp's next two steps would be due by now
    finally:
        load.stop.set()
        load.join()
    with api(gw.admin_url) as c:
        entries = c.get("/api/audit", params={"route": "flaky"}).json()["entries"]
        route = c.get("/api/routes/flaky").json()
    steps = [e for e in entries if e["action"] == "ramp-step"]
    assert [s["to_percent"] for s in steps] == [50]
    assert any(e["source"] == "guard" for e in entries)
    assert route["percent"] == 0 and (route["ramp"] is None or route["ramp"]["state"] == "halted")


def test_served_gateway_feeds_shadow_mismatch_share_to_the_guard(tmp_path, monkeypatch) -> None:
    """`chatgw serve` wires the shadow results into the guard (issue 7 §5)."""
    import os

    from gateway.server import build

    monkeypatch.setenv("CHATGW_STATE_DIR", str(tmp_path))
    for k in ("REDIS_URL", "CHATGW_REDIS_URL"):
        monkeypatch.delenv(k, raising=False)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    gw = build(os.path.join(root, "routes.yaml"), "127.0.0.1", 0, None)
    assert gw.control is not None and gw.control.guard is not None
    assert gw.control.guard.mismatch_rate == gw.shadow.results.mismatch_rate
