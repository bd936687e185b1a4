"""gateway.server: the two listeners of one process, readiness and a graceful stop."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import yaml
from gw_helpers import ThreadServer, main_config

MINIMAL = {
    "upstreams": {"x": {"url": "http://127.0.0.1:9"}},
    "routes": [{"name": "x", "match": {"prefix": "/x"}, "legacy": "x"}],
}


def test_ready_on_the_admin_port_describes_the_loaded_config(gw):
    r = httpx.get(gw.admin_url + "/ready", trust_env=False)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["routes"] == 22
    assert body["modules"] == ["probe"]
    assert body["config"].endswith("routes.yaml")


def test_admin_endpoints_are_not_served_on_the_client_port(gw):
    with gw.client() as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/ready").status_code == 404
    assert httpx.get(gw.admin_url + "/health", trust_env=False).status_code == 200


def test_sigterm_lets_an_in_flight_request_finish_and_module_lifespans_stop_then_exits(
    start_gateway, upstreams, dead_port, tmp_path
):
    log = tmp_path / "lifespan.log"
    g = start_gateway(main_config(upstreams, dead_port), CHATGW_PROBE_LOG=str(log))
    assert log.read_text().splitlines() == ["startup"]
    result: dict[str, object] = {}

    def slow_request() -> None:
        with g.client() as c:
            try:
                r = c.get("/slow/long", params={"ms": 1500})
                result["status"] = r.status_code
                result["body"] = r.json()
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.5)  # the request is now waiting on the upstream
    t0 = time.monotonic()
    code = g.stop(timeout=15)
    stopped_after = time.monotonic() - t0
    t.join(10)
    assert result.get("status") == 200, result
    assert result["body"] == {"upstream": "a", "slow": True}
    assert code in (0, -15)  # uvicorn re-raises the handled SIGTERM once drained
    assert 0.5 < stopped_after < 10
    assert log.read_text().splitlines() == ["startup", "shutdown"]
    with httpx.Client(trust_env=False) as c:
        try:
            c.get(g.url + "/health", timeout=2)
            refused = False
        except httpx.ConnectError:
            refused = True
    assert refused


def test_ready_is_503_while_the_client_listener_is_bound_but_not_listening(tmp_path):
    # What a client port shared with the admin port gave before chatgw refused it: the
    # client socket bound and never listening, the admin app up, and /ready said 200.
    from gateway.admin import create_admin_app
    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.server import uvicorn_config

    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    gateway = Gateway(load_config(str(path)), env={})
    gateway.ready = True
    admin = ThreadServer(
        uvicorn_config(create_admin_app(gateway), lifespan="off", log_level="critical")
    )
    url = f"http://127.0.0.1:{admin.port}/ready"
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            gateway.client_sockets = [sock]
            r = httpx.get(url, trust_env=False)
            assert (r.status_code, r.json()["status"]) == (503, "not listening")
            sock.listen(1)
            r = httpx.get(url, trust_env=False)
            assert (r.status_code, r.json()["status"]) == (200, "ready")
        r = httpx.get(url, trust_env=False)  # closed: not listening either
        assert (r.status_code, r.json()["status"]) == (503, "not listening")
    finally:
        admin.stop()
