"""``chatgw`` as ops run it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gw_helpers import OPS_SECRET, ROOT, free_port
from tests_support import free_ports

from gateway.config import load_config
from gateway.split import check_force_token

BROKEN = """\
upstreams:
  a: {url: "ftp://nope"}
routes:
  - name: r1
    match: {path: /x}
    legacy: missing
    new_percent: 120
  - name: r2
    match: {prefix: /y}
    legacy: a
    timeout: soon
"""


def chatgw(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGW_", "GATEWAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_check_on_the_shipped_routes_yaml_exits_0():
    path = os.path.join(ROOT, "routes.yaml")
    cfg = load_config(path)
    out = chatgw("check", path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{path}: OK ({len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams)"
    )


def test_check_on_a_broken_file_exits_1_listing_every_problem_with_its_line(tmp_path: Path):
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    out = chatgw("check", str(f))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert f"{f}:2 upstreams.a.url: 'ftp://nope' is not an http:// URL" in lines
    assert any(line.startswith(f"{f}:6 routes[0].legacy:") for line in lines)
    assert any(line.startswith(f"{f}:7 routes[0].new_percent: 120") for line in lines)
    assert any(line.startswith(f"{f}:11 routes[1].timeout: 'soon'") for line in lines)
    assert lines[-1] == f"{f}: 4 problems, config refused"
    assert out.stdout == ""


def test_check_on_a_missing_file_exits_1_with_a_clear_message(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    out = chatgw("check", str(missing))
    assert out.returncode == 1
    assert f"{missing} cannot be read: No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


TABLE = """\
upstreams:
  core: {url: "http://127.0.0.1:1"}
  admin: {url: "http://127.0.0.1:2"}
routes:
  - {name: item, match: {path: "/api/items/{id}", methods: [GET, DELETE]}, legacy: core,
     module: session, new_percent: 12.5}
  - {name: ws, match: {path: /ws, websocket: true}, legacy: core}
  - {name: admin, match: {prefix: /api/admin}, legacy: admin}
"""


def test_routes_prints_the_route_table(tmp_path: Path):
    f = tmp_path / "routes.yaml"
    f.write_text(TABLE)
    out = chatgw("routes", "--config", str(f))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows == [
        ["ROUTE", "MATCH", "LEGACY", "MODULE", "%", "NEW"],
        ["item", "/api/items/{id}", "[DELETE,GET]", "core", "session", "12.5"],
        ["ws", "/ws", "(ws)", "core", "-", "0"],
        ["admin", "/api/admin/**", "admin", "-", "0"],
    ]
    header = out.stdout.splitlines()[0]
    assert header.index("MATCH") == out.stdout.splitlines()[1].index("/api/items")  # aligned


@pytest.mark.parametrize("which", ["port", "admin-port"])
def test_serve_on_a_taken_port_exits_3_with_a_clear_message(which: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        port, admin = free_ports(2)
        ports = {"port": port, "admin-port": admin, which: busy}
        out = chatgw(
            "serve", "--config", os.path.join(ROOT, "routes.yaml"),
            "--port", str(ports["port"]), "--admin-port", str(ports["admin-port"]),
        )  # fmt: skip
    assert out.returncode == 3
    assert f"chatgw: cannot listen on 127.0.0.1:{busy}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("workers", [1, 3])
def test_serve_with_the_admin_port_on_the_client_port_exits_3(workers: int):
    # (Both sockets bound with SO_REUSEADDR before either listens: without the check the
    # admin app came up on the client port and the gateway died a moment later.)
    port = free_port()
    admin = port if workers == 1 else port - 1
    out = chatgw(
        "serve", "--config", os.path.join(ROOT, "routes.yaml"), "--port", str(port),
        "--admin-port", str(admin), "--workers", str(workers), timeout=30,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert (
        f"chatgw: cannot listen on 127.0.0.1:{port}: the client listener and an admin "
        "listener were given the same port"
    ) in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_with_a_broken_config_exits_1_before_listening(tmp_path: Path):
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    port = free_port()
    out = chatgw("serve", "--config", str(f), "--port", str(port), "--admin-port", str(free_port()))
    assert out.returncode == 1
    assert f"{f}:2 upstreams.a.url" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--no-such-flag"],
        ["serve", "--port", "eighty"],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
        ["force-token", "--side", "sideways"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_command_line_exits_2(args: list[str]):
    out = chatgw(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip()


def test_force_token_minted_by_the_cli_is_valid_for_the_side_and_ttl():
    out = chatgw("force-token", "--side", "new", "--ttl", "1h", GATEWAY_OPS_SECRET=OPS_SECRET)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert check_force_token(OPS_SECRET, token) == ("new", "ok")
    assert check_force_token("another-secret", token)[0] is None
    exp = int(token.split(".")[2])
    assert 3590 < exp - time.time() <= 3600


def test_force_token_without_the_ops_secret_exits_1():
    out = chatgw("force-token", "--side", "new")
    assert out.returncode == 1
    assert "GATEWAY_OPS_SECRET is not set" in out.stderr
    assert out.stdout == ""


def test_force_token_with_a_bad_ttl_exits_2():
    out = chatgw("force-token", "--side", "new", "--ttl", "forever", GATEWAY_OPS_SECRET="s")
    assert out.returncode == 2
    assert "--ttl 'forever'" in out.stderr
