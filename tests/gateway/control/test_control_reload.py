"""Hot reload: applied whole or refused whole (with file:line), overrides kept, SIGHUP."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import httpx
from control_helpers import CONFIG_TEXT, api, percent, wait_until

ADDED = (
    CONFIG_TEXT
    + """\
  - name: gamma
    match: {prefix: /gamma}
    legacy: a
    module: probe
    new_percent: 100
"""
)
BROKEN = CONFIG_TEXT.replace("new_percent: 10\n", "new_percent: 120\n")


def _routes(base: str) -> list[str]:
    with api(base) as c:
        return [r["name"] for r in c.get("/api/routes").json()["routes"]]


def test_valid_change_applied_by_the_file_watch(replicas: Callable[..., list[Any]]) -> None:
    (gw,) = replicas(1, CONFIG_TEXT)
    (gw.dir / "routes.yaml").write_text(ADDED)
    wait_until(lambda: "gamma" in _routes(gw.admin_url), timeout=5)
    with gw.client() as c:
        assert c.get("/gamma/x").headers["x-gateway-backend"] == "new"
    with api(gw.admin_url) as c:
        (e,) = [e for e in c.get("/api/audit").json()["entries"] if e["action"] == "reload"]
        assert (e["who"], e["source"], e["route"]) == ("file-watch", "reload", "*")
        assert "+gamma" in e["detail"]


def test_broken_file_refused_with_file_line_and_old_config_serving(
    replicas: Callable[..., list[Any]],
) -> None:
    (gw,) = replicas(1, CONFIG_TEXT)
    path = gw.dir / "routes.yaml"
    path.write_text(BROKEN)
    with api(gw.admin_url) as c:
        r = c.post("/api/reload", json={"reason": "try"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert (
            err["code"] == "config_refused" and "last good config keeps serving" in err["message"]
        )
        (issue,) = err["issues"]
        assert (issue["file"], issue["line"], issue["path"]) == (
            str(path),
            8,
            "routes[0].new_percent",
        )
        assert issue["text"].startswith(
            f"{path}:8 routes[0].new_percent: 120 is not between 0 and 100"
        )
        assert percent(gw.admin_url, "alpha") == 10  # the old config still serves
        refused = [
            e for e in c.get("/api/audit").json()["entries"] if e["action"] == "reload-refused"
        ]
        assert refused and f"{path}:8" in refused[0]["detail"]
    with gw.client() as client:
        assert client.get("/alpha/x").status_code in (200, 502)  # routed, not 404
    metrics = gw.metrics()
    assert "gateway_config_reload_failures_total" in metrics
    failures = [
        ln for ln in metrics.splitlines() if ln.startswith("gateway_config_reload_failures_total")
    ]
    assert float(failures[0].split()[-1]) >= 1
    wait_until(lambda: "config reload refused" in gw.stderr(), timeout=3)
    assert "routes[0].new_percent: 120 is not between 0 and 100" in gw.stderr()


def test_live_overrides_survive_a_reload(replicas: Callable[..., list[Any]]) -> None:
    (gw,) = replicas(1, CONFIG_TEXT)
    with api(gw.admin_url) as c:
        c.put("/api/routes/alpha/percent", json={"percent": 33, "reason": "x"}).raise_for_status()
        (gw.dir / "routes.yaml").write_text(ADDED.replace("new_percent: 10\n", "new_percent: 20\n"))
        r = c.post("/api/reload", json={})
        assert r.status_code == 200 and r.json()["ok"], r.text
        view = c.get("/api/routes/alpha").json()
        assert (view["percent"], view["default_percent"]) == (33, 20)


def test_sighup_triggers_a_reload(replicas: Callable[..., list[Any]]) -> None:
    (gw,) = replicas(1, CONFIG_TEXT, CHATGW_RELOAD_POLL_SECONDS="3600")  # no file watch
    (gw.dir / "routes.yaml").write_text(ADDED)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "gamma" in _routes(gw.admin_url), timeout=5)
    assert gw.proc.poll() is None  # SIGHUP did not end the process
    assert httpx.get(gw.admin_url + "/ready", trust_env=False).status_code == 200
