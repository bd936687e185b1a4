"""Start a real gateway process for tests: ``GatewayProcess`` (used by several suites).

The gateway runs as ``python -m gateway.cli serve`` on ephemeral ports with a routes file
written for the test, exactly as an operator would run it; ``stop()`` sends SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from tests_support import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def routes_at(percent: float, text: str | None = None) -> str:
    """The shipped routes.yaml with every route that has a module set to ``percent`` new."""
    if text is None:
        with open(os.path.join(ROOT, "routes.yaml"), encoding="utf-8") as fh:
            text = fh.read()
    out: list[str] = []
    has_module = False
    for line in text.splitlines():
        if re.match(r"^\s*- name:", line):
            has_module = False
        if re.match(r"^\s*module:", line):
            has_module = True
        if has_module and re.match(r"^\s*new_percent:", line):
            line = re.sub(r"new_percent:.*", f"new_percent: {percent:g}", line)
        out.append(line)
    return "\n".join(out) + "\n"


def gateway_env(stack: Any) -> dict[str, str]:
    """Environment for a gateway in front of ``stack`` (a tests.conftest.LegacyStack):
    upstream URLs, and the modules on the stack's own Redis db, MariaDB database, JWT
    secret and fake provider, so both sides share storage as in production."""
    env = stack.env
    user = quote(env["DB_USER"], safe="")
    password = quote(env.get("DB_PASSWORD", ""), safe="")
    auth = f"{user}:{password}" if password else user
    return {
        "CHAT_CORE_URL": stack.core,
        "AI_SERVICE_URL": stack.ai,
        "CHAT_SESSION_URL": stack.session,
        "CHAT_ADMIN_URL": stack.admin,
        "REDIS_URL": stack.redis_url,
        "DATABASE_URL": f"mysql+asyncmy://{auth}@{env['DB_HOST']}:{env['DB_PORT']}/{stack.mysql_db}",
        "JWT_SECRET_KEY": stack.jwt_secret,
        "DASHSCOPE_API_KEY": env["DASHSCOPE_API_KEY"],
        "DASHSCOPE_BASE_URL": stack.provider,
        "DASHSCOPE_TIMEOUT_MS": env.get("DASHSCOPE_TIMEOUT_MS", "30000"),
        "AI_SERVICE_TIMEOUT_MS": env.get("AI_SERVICE_TIMEOUT_MS", "40000"),
    }


class GatewayProcess:
    def __init__(self, routes_text: str, env: Mapping[str, str], workdir: str) -> None:
        self.port, self.admin_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.config = os.path.join(workdir, f"routes-{self.port}.yaml")
        with open(self.config, "w", encoding="utf-8") as fh:
            fh.write(routes_text)
        self.log_path = os.path.join(workdir, f"gateway-{self.port}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # The contract suite provokes 5xx on the new side on purpose (provider faults): the
        # guard would send routes back to legacy mid-suite. A test may turn it back on.
        # Each process is its own control-plane fleet unless the caller shares a prefix and
        # state dir on purpose (the two replicas of one contract target do). The prefix is
        # unique per process, not per port: a port comes back in a later test, and the
        # live weights an earlier process left under it must not steer this one.
        isolated = {
            "CHATGW_STATE_DIR": os.path.join(workdir, f"state-{self.port}"),
            "CHATGW_CONTROL_PREFIX": f"chatgw-test-{self.port}-{uuid.uuid4().hex[:12]}:",
        }
        full_env = {"CHATGW_GUARD": "off", **os.environ, **isolated, **env, "PYTHONPATH": ROOT}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", self.config,
             "--port", str(self.port), "--admin-port", str(self.admin_port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.admin}/ready", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
