"""Helpers of the control-plane tests (imported by their conftest and test modules)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig, parse_config

TOKEN = "test-admin-token-0123456789"
ALICE = "alice-token-9876543210"
T = TypeVar("T")

CONFIG: dict[str, Any] = {
    "upstreams": {"a": {"url": "http://127.0.0.1:9", "connect_timeout": "1s"}},
    "routes": [
        {"name": "alpha", "match": {"prefix": "/alpha"}, "legacy": "a", "module": "probe",
         "new_percent": 10},
        {"name": "beta", "match": {"prefix": "/beta"}, "legacy": "a", "module": "probe",
         "new_percent": 0},
        {"name": "plain", "match": {"prefix": "/plain"}, "legacy": "a"},
    ],
}  # fmt: skip

CONFIG_TEXT = """\
upstreams:
  a: {url: "http://127.0.0.1:9", connect_timeout: 1s}
routes:
  - name: alpha
    match: {prefix: /alpha}
    legacy: a
    module: probe
    new_percent: 10
  - name: beta
    match: {prefix: /beta}
    legacy: a
    module: probe
    new_percent: 0
  - name: plain
    match: {prefix: /plain}
    legacy: a
"""


def config() -> GatewayConfig:
    return parse_config(CONFIG_TEXT, "routes.yaml", env={}, known_modules=["probe"])


def gateway() -> Gateway:
    return Gateway(config(), env={})


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    pytest.fail(f"condition not met within {timeout} s")


def wait_until(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(step)
    pytest.fail(f"condition not met within {timeout} s")


def api(base: str, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=10, trust_env=False)


def percent(base: str, route: str, token: str = TOKEN) -> float:
    with api(base, token) as c:
        return float(c.get(f"/api/routes/{route}").json()["percent"])


class OwnRedis:
    """A throw-away redis-server (no persistence) that a test can kill and restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
