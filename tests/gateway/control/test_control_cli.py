"""``chatgw status|set|rollback|ramp|audit|reload`` against a running gateway: tables,
--json and the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from control_helpers import ALICE, CONFIG, TOKEN, OwnRedis, api
from gw_helpers import ROOT, free_port


def chatgw(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("GATEWAY_ADMIN_TOKEN", None)
    env.pop("CHATGW_ADMIN_URL", None)
    if token is not None:
        env["GATEWAY_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def gw(replicas: Callable[..., list[Any]]) -> Any:
    (one,) = replicas(1, CONFIG)
    return one


def test_set_status_rollback_audit_as_tables(gw: Any) -> None:
    url = ["--url", gw.admin_url]
    r = chatgw("set", "alpha", "25", "--reason", "canary", *url, token=ALICE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "alpha: 10 % → 25 % new (version 1)"
    with gw.client() as c:
        for i in range(20):
            c.get(f"/alpha/{i}")
    r = chatgw("status", *url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "store redis" in lines[0] and "reachable" in lines[0]
    assert lines[1].split()[:3] == ["ROUTE", "%", "NEW"]
    alpha = next(line for line in lines if line.startswith("alpha"))
    assert alpha.split()[1:3] == ["25", "*"]
    with api(gw.admin_url) as c:
        state = c.get("/api/guard").json()["routes"]["alpha"]["state"]
    assert lines[1].split()[-1] == "GUARD" and alpha.split()[-1] == state
    assert next(line for line in lines if line.startswith("plain")).split()[-1] == "-"
    assert next(line for line in lines if line.startswith("plain")).split()[1:4] == [
        "-",
        "(no",
        "module)",
    ]
    r = chatgw("rollback", "--all", "--reason", "incident", *url)
    assert r.returncode == 0 and "alpha: 25 % → 0 % new (rolled back)" in r.stdout
    r = chatgw("audit", *url)
    assert r.returncode == 0
    rows = r.stdout.splitlines()
    assert rows[0].split()[:4] == ["TIME", "(UTC)", "WHO", "SOURCE"]
    assert rows[1].split()[2:6] == ["admin", "cli", "rollback", "alpha"]
    assert rows[2].split()[2:7] == ["alice", "cli", "set", "alpha", "10→25"]


def test_json_output_is_the_api_answer(gw: Any) -> None:
    url = ["--url", gw.admin_url, "--json"]
    r = chatgw("set", "beta", "12.5", "--reason", "x", *url)
    assert json.loads(r.stdout) == {"route": "beta", "from": 0.0, "to": 12.5, "version": 1}
    status = json.loads(chatgw("status", *url).stdout)
    assert [x["percent"] for x in status["routes"]] == [10, 12.5, 0]
    audit = json.loads(chatgw("audit", *url).stdout)
    assert audit["entries"][0]["to_percent"] == 12.5
    r = chatgw("ramp", "beta", "--steps", "20,30", "--every", "10m", "--reason", "x", *url)
    assert r.returncode == 0 and json.loads(r.stdout)["ramp"]["steps"] == [20, 30]
    r = chatgw("ramp", "beta", "--stop", *url)
    assert r.returncode == 0 and json.loads(r.stdout)["stopped"]["state"] == "running"
    r = chatgw("reload", *url)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = chatgw("set", "nope", "5", "--reason", "x", *url)
    assert r.returncode == 4 and json.loads(r.stdout)["error"]["code"] == "not_found"


def test_exit_codes_scripts_can_trust(gw: Any) -> None:
    url = ["--url", gw.admin_url]
    assert chatgw("set", "alpha", "120", "--reason", "x", *url).returncode == 1  # refused
    assert chatgw("set", "plain", "5", "--reason", "x", *url).returncode == 1  # no module
    assert chatgw("set", "alpha", "5", *url).returncode == 2  # --reason missing
    assert chatgw("set", "alpha", "lots", "--reason", "x", *url).returncode == 2
    assert chatgw("rollback", "--reason", "x", *url).returncode == 2  # ROUTE or --all
    assert (
        chatgw("ramp", "alpha", "--steps", "1,x", "--every", "1m", "--reason", "x", *url).returncode
        == 2
    )
    assert chatgw("rollback", "nope", "--reason", "x", *url).returncode == 4
    assert chatgw("ramp", "alpha", "--stop", *url).returncode == 4  # no ramp on it
    assert chatgw("status", "--url", f"http://127.0.0.1:{free_port()}").returncode == 5
    r = chatgw("status", *url, token="wrong")
    assert r.returncode == 6 and "wrong bearer token" in r.stderr
    assert chatgw("status", *url, token=None).returncode == 6
    r = chatgw("status", *url)
    assert r.returncode == 0 and TOKEN not in r.stdout + r.stderr


def test_store_down_ready_degraded_and_writes_exit_7(
    start_gateway: Callable[..., Any], own_redis: OwnRedis, control_env: dict[str, str]
) -> None:
    gw = start_gateway(CONFIG, **{**control_env, "CHATGW_REDIS_URL": own_redis.url,
                                  "CHATGW_RECONCILE_SECONDS": "0.2"})  # fmt: skip
    with api(gw.admin_url) as c:
        c.put("/api/routes/alpha/percent", json={"percent": 40, "reason": "x"}).raise_for_status()
        own_redis.stop()
        from control_helpers import wait_until

        wait_until(lambda: c.get("/ready").json()["status"] == "degraded", timeout=5)
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["control"]["store"]["reachable"] is False
        assert c.get("/api/routes/alpha").json()["percent"] == 40  # last known weights
    r = chatgw("set", "alpha", "0", "--reason", "x", "--url", gw.admin_url)
    assert r.returncode == 7 and "unreachable" in r.stderr and "nothing was changed" in r.stderr
    with gw.client() as c:
        assert c.get("/alpha/x").status_code in (200, 502)
