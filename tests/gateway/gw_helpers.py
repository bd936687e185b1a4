"""Helpers of the gateway I/O tests (imported by conftest.py and the test modules).

tests/ has no ``__init__.py``, so the top conftest is not importable by a stable name: its
``need``/``free_port``/``node_available`` are loaded here by file path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests_support import free_ports

HERE = Path(__file__).resolve().parent


def _load_root_conftest() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_chatgw_root_conftest", HERE.parent / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_root = _load_root_conftest()
ROOT: str = _root.ROOT
need: Callable[[bool, str], None] = _root.need
free_port: Callable[[], int] = _root.free_port
node_available: Callable[[], bool] = _root.node_available

OPS_SECRET = "test-ops-secret-for-force-tokens"
NODE_PATH = os.path.join(ROOT, "deploy", "legacy", "node_modules")
MiB = 1024 * 1024


# --------------------------------------------------------------------------- upstreams


class Upstreams:
    """The Node upstreams: ``port[name]``, ``url(name)`` and the side endpoints."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.port = ports

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port[name]}"

    def side(self, path: str, name: str = "a") -> Any:
        return httpx.get(self.url(name) + path, timeout=10, trust_env=False).json()

    def seen(self, name: str = "a") -> list[str]:
        return list(self.side("/__log", name)["seen"])


# --------------------------------------------------------------------------- gateway


class GatewayProc:
    """A running ``chatgw serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin_port: int, d: Path):
        self.proc = proc
        self.port = port
        self.admin_port = admin_port
        self.dir = d
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return (self.dir / "stdout.log").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.dir / "stderr.log").read_text(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=10, trust_env=False).text

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 15)
        return httpx.Client(base_url=self.url, trust_env=False, **kw)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def gateway_env(**extra: str) -> dict[str, str]:
    # No PYTHONUNBUFFERED: stdout is a file here, block-buffered as in a container.
    env = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "PYTHONUNBUFFERED"
    }
    env.update(
        PYTHONPATH=os.pathsep.join([ROOT, str(HERE)]),
        CHATGW_EXTRA_MODULES="probe=sample_modules:create_probe",
        GATEWAY_OPS_SECRET=OPS_SECRET,
    )
    env.update(extra)
    return env


def spawn_gateway(
    config: dict[str, Any] | str, d: Path, *, launcher: str = "gateway.cli", **env: str
) -> GatewayProc:
    """Start ``chatgw serve`` on ``config`` and wait until ``/ready`` says 200.

    ``launcher``: the module run as ``python -m`` with chatgw's arguments (the CLI, or a
    wrapper of it such as ``relay_gateway``)."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "routes.yaml"
    cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    port, admin = free_ports(2)
    argv = [sys.executable, "-m", launcher, "serve", "--config", str(cfg),
            "--port", str(port), "--admin-port", str(admin)]  # fmt: skip
    with open(d / "stdout.log", "wb") as out, open(d / "stderr.log", "wb") as err:
        env.setdefault("CHATGW_STATE_DIR", str(d / "state"))  # no shared .run/ between tests
        proc = subprocess.Popen(argv, cwd=ROOT, env=gateway_env(**env), stdout=out, stderr=err)
    gw = GatewayProc(proc, port, admin, d)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.stderr()}")
        try:
            if httpx.get(gw.admin_url + "/ready", timeout=1, trust_env=False).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError(f"gateway not ready within 30 s:\n{gw.stderr()}")


StartGateway = Callable[..., GatewayProc]


def main_config(up: Upstreams, dead: int) -> dict[str, Any]:
    """Routes of the shared gateway: one per situation, upstreams a, b, c and a dead one."""

    def route(name: str, legacy: str = "a", **kw: Any) -> dict[str, Any]:
        match = kw.pop("match", None) or {"prefix": "/" + name}
        return {"name": name, "match": match, "legacy": legacy, **kw}

    return {
        "settings": {"backend_header": True, "access_log": True},
        "defaults": {"timeout": "10s", "body_limit": "1MiB", "sticky": "jwt.sub"},
        "upstreams": {
            "a": {"url": up.url("a")},
            "b": {"url": up.url("b")},
            "c": {"url": up.url("c")},
            "dead": {"url": f"http://127.0.0.1:{dead}", "connect_timeout": "1s"},
        },
        "routes": [
            route("echo"),
            route("big", body_limit="200MiB"),
            route("upload", body_limit="200MiB"),
            route("sse"),
            route("slow", timeout="1s"),
            route("slow-long", match={"prefix": "/slow/long"}, timeout="30s"),
            route("break"),
            route("redirect"),
            route("cookie"),
            route("hop"),
            route("conflict"),
            route("limited", body_limit="1KiB"),
            route("refused", legacy="dead"),
            route("items", match={"prefix": "/api/items"}),
            route("item", legacy="b", match={"path": "/api/items/{id}"}),
            route("item-special", legacy="c", match={"path": "/api/items/special"}),
            route("split", module="probe", new_percent=50),
            route("forced", module="probe", new_percent=0),
            route("legacy-only"),
            route("probe", module="probe", new_percent=100, body_limit="1KiB"),
            route("ws", match={"path": "/ws", "websocket": True}),
            route("ws-new", match={"path": "/ws-new", "websocket": True}, module="probe",
                  new_percent=100),
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------- helpers


def raw_http(
    port: int, request: bytes, timeout: float = 10
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send raw request bytes (should say ``Connection: close``); (status, headers, body).

    The body is returned as received (still chunk-encoded if it was).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return status, headers, body


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def header_list(echo: dict[str, Any], name: str) -> list[str]:
    """Values of a header in the Node echo (raw header pairs, names lower-cased)."""
    return [v for k, v in echo["headers"] if k == name]


class RssSampler:
    """Samples a process's resident set size every 2 ms in a thread; ``growth`` in bytes."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.samples += 1
            self._stop.wait(0.002)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


_make_token: Callable[..., str] = _root.make_token


def make_token(sub: str, **claims: Any) -> str:
    """A JWT with this ``sub`` (the gateway reads it unverified; 32-byte key: no warning)."""
    return _make_token(sub, secret="gateway-tests-jwt-secret-32-bytes!!", **claims)


def force_token(side: str = "new", ttl: str = "1h", secret: str = OPS_SECRET) -> str:
    """A force token minted by the CLI, as ops would: ``chatgw force-token``."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "force-token", "--side", side, "--ttl", ttl],
        cwd=ROOT, env={**os.environ, "GATEWAY_OPS_SECRET": secret},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def read_responses(c: socket.socket, n: int = 1) -> Any:
    """One response (``n`` responses as a list), however the reads split them."""
    data, answers = b"", []
    while len(answers) < n:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            assert chunk, "the connection closed before the answer"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )  # fmt: skip
        while len(rest) < length:
            chunk = c.recv(65536)
            assert chunk, "the connection closed before the answer"
            rest += chunk
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers[0] if n == 1 else answers


#: The ``run`` fixture (conftest.py): runs a test's coroutine on asyncio's loop, then uvloop's.
Run = Callable[[Coroutine[Any, Any, Any]], Any]


class ThreadServer:
    """A uvicorn server on a thread of the test process, on a free port of 127.0.0.1."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
