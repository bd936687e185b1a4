"""Fixtures of the control-plane tests.

* ``prefix`` — a fresh Redis key prefix (and channel) per test, in the session's
  ``redis_db``: replicas of one test share it, nothing else does.
* ``control_env`` — the environment of a gateway on that prefix with admin tokens
  ``admin`` (``TOKEN``) and ``alice`` (``ALICE``) and its own state directory.
* ``replicas(n, config)`` — n gateway subprocesses (``start_gateway`` of
  tests/gateway/conftest.py: the probe module is loadable there) on one prefix.
* ``own_redis`` — a redis-server of our own on an ephemeral port, to kill.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from control_helpers import ALICE, TOKEN, OwnRedis
from gw_helpers import GatewayProc, free_port, need


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
def control_env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {
        "CHATGW_REDIS_URL": redis_url,
        "CHATGW_CONTROL_PREFIX": prefix,
        "CHATGW_STATE_DIR": str(tmp_path / "state"),
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "GATEWAY_ADMIN_TOKENS": f"alice:{ALICE}",
        "CHATGW_RELOAD_POLL_SECONDS": "0.2",
    }


@pytest.fixture
def replicas(
    start_gateway: Callable[..., GatewayProc], control_env: dict[str, str]
) -> Callable[..., list[GatewayProc]]:
    def start(n: int, config: dict[str, Any] | str, **env: str) -> list[GatewayProc]:
        return [start_gateway(config, **{**control_env, **env}) for _ in range(n)]

    return start


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = free_port()
    server = OwnRedis(port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
