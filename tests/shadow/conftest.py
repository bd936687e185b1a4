"""Fixtures of the shadow tests (plain helpers live in shadow_helpers.py: importing from
``conftest`` is ambiguous once several test folders have one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gateway_process import ROOT
from shadow_helpers import ADMIN_TOKEN, ShadowGateway, _free_port, with_isolation


@pytest.fixture(scope="session")
def test_upstream() -> Iterator[str]:
    """``tests/shadow/shadow_apps.py:upstream`` under uvicorn: the legacy side."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.shadow.shadow_apps:upstream",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/writes", timeout=1, trust_env=False)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["loop", "process"])
def shadow_isolation(request: pytest.FixtureRequest) -> str:
    """Every shadow test runs with the copies in the serving loop and in a worker process
    (``settings.shadow.isolation``), unless its config names one itself."""
    return str(request.param)


@pytest.fixture
def shadow_gateway(
    test_upstream: str, tmp_path: Any, shadow_isolation: str
) -> Iterator[Callable[..., ShadowGateway]]:
    made: list[ShadowGateway] = []

    def make(text: str, **env: str) -> ShadowGateway:
        text = with_isolation(text, shadow_isolation)
        full = {
            "CHATGW_EXTRA_MODULES": "shadowtest=tests.shadow.shadow_apps:create_module",
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            **env,
        }
        gw = ShadowGateway(text, full, str(tmp_path))
        made.append(gw)
        if shadow_isolation in ("loop", "process") and full.get("GATEWAY_ADMIN_TOKEN"):
            assert gw.api("/api/shadow")["isolation"] == shadow_isolation
        return gw

    yield make
    for gw in made:
        gw.stop()
