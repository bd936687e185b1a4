"""CI: the contract replay script, legacy versus the gateway at 100 % new, must not differ;
and a deliberate incompatibility in a module is caught by the replay and the live shadow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import ROOT, GatewayProcess, gateway_env, routes_at
from shadow_helpers import ADMIN_TOKEN

SCRIPT = os.path.join(ROOT, "tests", "replay", "contract.jsonl")
BROKEN = "session_broken=tests.shadow.broken_modules:create_session"


def _legacy_targets(stack: Any, tmp: Path) -> str:
    path = tmp / "legacy-targets.json"
    path.write_text(
        json.dumps(
            {
                "services": {
                    "chat-core": stack.core,
                    "ai-service": stack.ai,
                    "chat-session": stack.session,
                    "chat-admin": stack.admin,
                }
            }
        )
    )
    return str(path)


def _replay(*args: str, secret: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", *args, "--jwt-secret", secret],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


@pytest.fixture(scope="module")
def gateway_100(legacy_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(
        routes_at(100), gateway_env(legacy_stack), str(tmp_path_factory.mktemp("gw100"))
    )
    yield gw
    gw.stop()


@pytest.mark.slow
def test_contract_replay_legacy_vs_gateway_100_reports_no_difference(
    legacy_stack: Any, gateway_100: Any, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    proc = _replay(
        SCRIPT,
        "--a", _legacy_targets(legacy_stack, tmp_path),
        "--b", gateway_100.url,
        "--report", str(report),
        "--fail-on-diff",
        secret=legacy_stack.jwt_secret,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["summary"]["errors"] == 0
    assert data["summary"]["entries"] >= 50
    kinds = {e["kind"] for e in data["entries"]}
    assert kinds == {"http", "sse", "ws"}
    html = tmp_path / "report.html"
    proc = _replay(
        SCRIPT, "--a", _legacy_targets(legacy_stack, tmp_path), "--b", gateway_100.url,
        "--report", str(html), secret=legacy_stack.jwt_secret,
    )  # fmt: skip
    assert proc.returncode == 0 and "<table>" in html.read_text()


def _broken_routes(percent: float, shadow: bool) -> str:
    text = routes_at(percent)
    block = "    module: session\n"
    assert block in text
    out = text.replace(block, "    module: session_broken\n")
    if shadow:
        out = out.replace(
            "  - name: session-item\n"
            '    match: {path: "/api/sessions/{sessionId}"}\n'
            "    legacy: chat-session\n"
            "    module: session_broken\n"
            f"    new_percent: {percent:g}\n",
            "  - name: session-item\n"
            '    match: {path: "/api/sessions/{sessionId}"}\n'
            "    legacy: chat-session\n"
            "    module: session_broken\n"
            f"    new_percent: {percent:g}\n"
            "    shadow: {percent: 100, compare: {normalise: [uuid, timestamp]}}\n",
        )
        assert "shadow:" in out
    return out


@pytest.mark.slow
def test_broken_module_caught_by_replay_and_live_shadow(legacy_stack: Any, tmp_path: Path) -> None:
    env = {**gateway_env(legacy_stack), "CHATGW_EXTRA_MODULES": BROKEN}
    broken_100 = GatewayProcess(_broken_routes(100, shadow=False), env, str(tmp_path))
    try:
        proc = _replay(
            SCRIPT, "--a", _legacy_targets(legacy_stack, tmp_path), "--b", broken_100.url,
            "--fail-on-diff", secret=legacy_stack.jwt_secret,
        )  # fmt: skip
    finally:
        broken_100.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "$.agent" in proc.stdout

    env["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    live = GatewayProcess(_broken_routes(0, shadow=True), env, str(tmp_path))
    try:
        import jwt

        token = jwt.encode(
            {"sub": "c-live", "role": "customer", "exp": int(time.time()) + 600},
            legacy_stack.jwt_secret,
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=live.url, trust_env=False, timeout=15) as c:
            sid = c.post("/api/sessions", json={}, headers=auth).json()["sessionId"]
            r = c.get(f"/api/sessions/{sid}", headers=auth)
            assert r.json()["agent"] == "ai"  # the client got legacy's (right) answer
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 10
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            status = httpx.get(live.admin + "/api/shadow", headers=admin, trust_env=False).json()
            counts = status["routes"]["session-item"]["counts"]
            if counts.get("mismatch"):
                break
            time.sleep(0.1)
        assert counts.get("mismatch") == 1, counts
        samples = httpx.get(
            live.admin + "/api/shadow/samples?route=session-item", headers=admin, trust_env=False
        ).json()["data"]
        assert [d["path"] for d in samples[0]["differences"]] == ["$.agent"]
        assert "Bearer" not in json.dumps(samples)
        report = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "shadow", "report", "--admin", live.admin],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": ROOT, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        assert "session-item" in report.stdout and "$.agent" in report.stdout
    finally:
        live.stop()
