"""The control API on a real gateway: tokens, set / rollback / reset, audit, OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from control_helpers import ALICE, CONFIG, TOKEN, api, percent

from gateway.control.api import routes as api_routes
from gateway.control.auth import Tokens
from gateway.control.dashboard import routes as dashboard_routes
from gateway.control.openapi import OPENAPI
from gateway.shadow.api import routes as shadow_routes

Replicas = Callable[..., list[Any]]


def test_no_token_configured_every_control_request_403_with_reason(start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(CONFIG, CHATGW_STATE_DIR=str(tmp_path / "s"), GATEWAY_ADMIN_TOKEN="",
                       GATEWAY_ADMIN_TOKENS="")  # fmt: skip
    with api(gw.admin_url, token="anything") as c:
        for method, path in [("GET", "/api/routes"), ("PUT", "/api/routes/alpha/percent"),
                             ("GET", "/api/audit"), ("POST", "/api/reload")]:  # fmt: skip
            r = c.request(method, path, json={"percent": 5, "reason": "x"})
            assert r.status_code == 403, path
            assert "GATEWAY_ADMIN_TOKEN is not set" in r.json()["error"]["message"]
        assert c.get("/metrics").status_code == 200  # Prometheus and probes stay open
        assert c.get("/ready").status_code == 200


def test_wrong_or_missing_token_401_reads_included(replicas: Replicas) -> None:
    (gw,) = replicas(1, CONFIG)
    for token in (None, "wrong", TOKEN[:-1]):
        with api(gw.admin_url, token) as c:
            r = c.get("/api/routes")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert (
                c.put("/api/routes/alpha/percent", json={"percent": 5, "reason": "x"}).status_code
                == 401
            )
    with api(gw.admin_url) as c:
        assert percent(gw.admin_url, "alpha") == 10  # unchanged by the refused writes
        assert c.get("/api/routes", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert httpx.get(gw.admin_url + "/ready", trust_env=False).json()["status"] == "ready"


def test_tokens_compared_with_compare_digest_against_each(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.control.auth as auth

    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = Tokens.from_env(
        {"GATEWAY_ADMIN_TOKEN": "t0", "GATEWAY_ADMIN_TOKENS": "alice:t1,bob:t2"}
    )
    assert tokens.who("Bearer t0") == "admin"
    assert len(calls) == 3  # every token is compared, even after a match
    calls.clear()
    assert tokens.who("Bearer t2") == "bob" and len(calls) == 3
    assert tokens.who("Bearer nope") is None
    assert tokens.who(None) is None and tokens.who("t1") is None


def test_set_percent_applied_and_audited_under_the_token_name(replicas: Replicas) -> None:
    (gw,) = replicas(1, CONFIG)
    with api(gw.admin_url, ALICE) as c:
        r = c.put("/api/routes/alpha/percent", json={"percent": 37.5, "reason": "canary"})
        assert r.status_code == 200, r.text
        assert r.json() == {"route": "alpha", "from": 10.0, "to": 37.5, "version": 1}
        view = c.get("/api/routes/alpha").json()
        assert (view["percent"], view["default_percent"], view["override_percent"]) == (
            37.5,
            10,
            37.5,
        )
        (e,) = c.get("/api/audit").json()["entries"]
        assert (e["who"], e["source"], e["action"], e["route"]) == ("alice", "api", "set", "alpha")
        assert (e["from_percent"], e["to_percent"], e["reason"]) == (10.0, 37.5, "canary")
    assert 'gateway_route_new_percent{route="alpha"} 37.5' in gw.metrics()


INVALID: list[tuple[str, dict[str, Any], int, str]] = [
    ("/api/routes/alpha/percent", {"percent": 120, "reason": "x"}, 400, "between 0 and 100"),
    ("/api/routes/alpha/percent", {"percent": 1.234, "reason": "x"}, 400, "2 decimals"),
    ("/api/routes/alpha/percent", {"percent": "50", "reason": "x"}, 400, "not a number"),
    ("/api/routes/alpha/percent", {"percent": 5}, 400, "'reason' is required"),
    (
        "/api/routes/alpha/percent",
        {"percent": 5, "reason": "x", "source": "guard"},
        400,
        "'source'",
    ),
    ("/api/routes/nope/percent", {"percent": 5, "reason": "x"}, 404, "no route named 'nope'"),
    ("/api/routes/plain/percent", {"percent": 5, "reason": "x"}, 409, "has no module"),
    ("/api/routes/alpha/ramp", {"steps": [1, 5], "every": "soon", "reason": "x"}, 400, "duration"),
    ("/api/routes/alpha/ramp", {"steps": [], "every": "1s", "reason": "x"}, 400, "steps"),
    ("/api/routes/alpha/ramp/stop", {}, 404, "no ramp"),
]


def test_invalid_change_refused_with_reason_and_nothing_written(replicas: Replicas) -> None:
    (gw,) = replicas(1, CONFIG)
    with api(gw.admin_url) as c:
        for path, body, status, needle in INVALID:
            method = "PUT" if path.endswith("percent") else "POST"
            r = c.request(method, path, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert needle in r.json()["error"]["message"], (path, body)
        assert c.put("/api/routes/alpha/percent", content=b"{nope").status_code == 400
        assert c.get("/api/version").json()["version"] == 0  # nothing was written
        assert c.get("/api/audit").json()["entries"] == []


def test_rollback_one_then_all_and_reset(replicas: Replicas) -> None:
    (gw,) = replicas(1, CONFIG)
    with api(gw.admin_url) as c:
        c.put("/api/routes/alpha/percent", json={"percent": 50, "reason": "up"}).raise_for_status()
        c.put("/api/routes/beta/percent", json={"percent": 20, "reason": "up"}).raise_for_status()
        r = c.post("/api/routes/alpha/rollback", json={"reason": "errors"})
        assert r.json()["changed"] == [{"route": "alpha", "from": 50.0, "to": 0.0}]
        assert percent(gw.admin_url, "alpha") == 0 and percent(gw.admin_url, "beta") == 20
        r = c.post("/api/rollback", json={"reason": "incident"})
        assert r.json()["changed"] == [{"route": "beta", "from": 20.0, "to": 0.0}]
        assert c.post("/api/rollback", json={"reason": "again"}).json()["changed"] == []
        r = c.post("/api/routes/alpha/reset", json={"reason": "back to file"})
        assert r.json()["to"] == 10.0 and percent(gw.admin_url, "alpha") == 10
        actions = [(e["action"], e["route"]) for e in c.get("/api/audit").json()["entries"]]
        assert actions == [("reset", "alpha"), ("rollback", "beta"), ("rollback", "alpha"),
                           ("set", "beta"), ("set", "alpha")]  # fmt: skip
        # Requests follow: alpha at 0 % goes to legacy whatever the key.
        c.post("/api/routes/alpha/rollback", json={"reason": "x"}).raise_for_status()
    with gw.client() as client:
        sides = {
            client.get(f"/alpha/{i}", headers={"x-user": str(i)}).headers.get("x-gateway-backend")
            for i in range(10)
        }
    assert sides == {"legacy"}


def test_openapi_document_is_valid_and_names_every_endpoint(replicas: Replicas) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(OPENAPI)
    (gw,) = replicas(1, CONFIG)
    served = httpx.get(gw.admin_url + "/api/openapi.json", trust_env=False).json()
    assert served == OPENAPI
    mounted = {(r.path, m) for r in _mounted() for m in (r.methods or ()) if m != "HEAD"}
    documented = {(p, m.upper()) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert mounted - {("/api/openapi.json", "GET")} == documented


def _mounted() -> list[Any]:
    """Every ``/api`` route the admin listener mounts (control, dashboard, shadow)."""

    class _Plane:  # the routes only close over the plane; nothing is called here
        tokens = Tokens(())
        tokens_error = ""

    plane: Any = _Plane()
    mounted = [*api_routes(plane), *dashboard_routes(plane), *shadow_routes(None, plane)]  # type: ignore[arg-type]
    return [r for r in mounted if r.path.startswith("/api/")]
