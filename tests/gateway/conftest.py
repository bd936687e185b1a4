"""Fixtures of the gateway I/O tests: real processes, real sockets.

* ``upstreams`` — one Node process (``node_upstream.js``) serving upstreams ``a``, ``b``
  and ``c`` on ephemeral ports: the most faithful stand-in for the legacy services.
* ``start_gateway(config, **env)`` — the gateway as a subprocess (``python -m gateway.cli
  serve``) on ephemeral ports, ready once its admin ``/ready`` answers 200; every gateway
  it started is stopped (SIGTERM, then kill) after the test.
* ``gw`` — one shared gateway on ``main_config`` for the whole session. It runs with
  ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` pointing at a dead port, so every proxied
  test also checks that the gateway ignores environment proxies.
* ``raw_upstream(response)`` — a TCP server that answers canned bytes (malformed upstreams).

Helpers live in ``gw_helpers.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from gw_helpers import (
    HERE,
    NODE_PATH,
    GatewayProc,
    Run,
    StartGateway,
    Upstreams,
    free_port,
    main_config,
    need,
    node_available,
    spawn_gateway,
)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[Upstreams]:
    need(node_available(), "node is not installed")
    need(os.path.isdir(os.path.join(NODE_PATH, "ws")), "deploy/legacy/node_modules/ws is missing")
    proc = subprocess.Popen(
        ["node", str(HERE / "node_upstream.js"), "a", "b", "c"],
        env={**os.environ, "NODE_PATH": NODE_PATH},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "node upstream exited before listening"
        yield Upstreams(json.loads(line))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def dead_port() -> int:
    """A port nobody listens on (connections are refused)."""
    return free_port()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Factory: ``start_gateway(config, launcher=..., **env)`` (``spawn_gateway``'s); every
    gateway started is stopped after."""
    made: list[GatewayProc] = []

    def start(
        config: dict[str, Any] | str, *, launcher: str = "gateway.cli", **env: str
    ) -> GatewayProc:
        gw = spawn_gateway(config, tmp_path / f"gw{len(made)}", launcher=launcher, **env)
        made.append(gw)
        return gw

    yield start
    for gw in made:
        gw.stop()


@pytest.fixture(scope="session")
def gw(
    upstreams: Upstreams, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    """The shared gateway on :func:`main_config`, with environment proxies set (ignored)."""
    d = tmp_path_factory.mktemp("gateway")
    dead_proxy = f"http://127.0.0.1:{dead_port}"
    proc = spawn_gateway(
        main_config(upstreams, dead_port), d,
        HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy, ALL_PROXY=dead_proxy,
        http_proxy=dead_proxy, https_proxy=dead_proxy, all_proxy=dead_proxy,
        CHATGW_PROBE_LOG=str(d / "probe.log"),
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[bytes], tuple[int, list[bytes]]]]:
    """Factory: a TCP server answering every connection with the given bytes, then closing.

    Returns (port, list of request bytes received, one entry per connection).
    """
    servers: list[socket.socket] = []

    def make(response: bytes) -> tuple[int, list[bytes]]:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        servers.append(srv)
        received: list[bytes] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(5)
                    data = b""
                    try:
                        while b"\r\n\r\n" not in data:
                            chunk = conn.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                        received.append(data)
                        conn.sendall(response)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return srv.getsockname()[1], received

    yield make
    for srv in servers:
        srv.close()


@pytest.fixture(scope="session")
def gw_quiet(
    upstreams: Upstreams, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    """A second gateway on ``main_config`` with ``settings.backend_header: false``."""
    cfg = main_config(upstreams, dead_port)
    cfg["settings"]["backend_header"] = False
    proc = spawn_gateway(cfg, tmp_path_factory.mktemp("gateway-quiet"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gw_down(dead_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """A gateway whose only upstream refuses connections (HTTP catch-all and ``/ws``)."""
    cfg = {
        "upstreams": {"down": {"url": f"http://127.0.0.1:{dead_port}"}},
        "routes": [
            {"name": "all", "match": {"prefix": "/"}, "legacy": "down"},
            {"name": "ws", "match": {"path": "/ws", "websocket": True}, "legacy": "down"},
        ],
    }
    proc = spawn_gateway(cfg, tmp_path_factory.mktemp("gateway-down"))
    yield proc
    proc.stop()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Runs a test's coroutine (no pytest-asyncio) on the default asyncio loop, and again
    on uvloop (what uvicorn runs in production)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 30))

    yield runner
