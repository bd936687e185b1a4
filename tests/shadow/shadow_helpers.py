"""Fixtures of the shadow tests: a real upstream process and real gateway processes."""

from __future__ import annotations

import time
from typing import Any

import httpx
from gateway_process import GatewayProcess

ADMIN_TOKEN = "shadow-test-admin-token"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def routes_text(upstream: str, shadow: str, *, settings: str = "", extra_route: str = "") -> str:
    return f"""
settings:
  access_log: false
{settings}
upstreams:
  legacy: {{url: "{upstream}", read_timeout: 10s}}
routes:
  - name: items
    match: {{prefix: /api}}
    legacy: legacy
    module: shadowtest
    new_percent: 0
    shadow: {shadow}
{extra_route}
"""


def with_isolation(text: str, isolation: str) -> str:
    """``text`` with ``settings.shadow.isolation`` set (added to the test's own
    ``settings.shadow`` mapping when it has one)."""
    if isolation not in ("loop", "process") or "isolation:" in text:
        return text  # the config as the test wrote it
    if "\nsettings: {" in text:
        return text.replace(
            "\nsettings: {", f"\nsettings: {{shadow: {{isolation: {isolation}}}, ", 1
        )
    if "\n  shadow: {" in text:
        return text.replace("\n  shadow: {", f"\n  shadow: {{isolation: {isolation}, ", 1)
    return text.replace("\nsettings:\n", f"\nsettings:\n  shadow: {{isolation: {isolation}}}\n", 1)


class ShadowGateway(GatewayProcess):
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=15)

    def api(self, path: str) -> Any:
        r = httpx.get(
            self.admin + path,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
            trust_env=False,
        )
        r.raise_for_status()
        return r.json()

    def counts(self, route: str = "items") -> dict[str, int]:
        return dict(self.api("/api/shadow")["routes"].get(route, {}).get("counts") or {})

    def wait_counts(self, total: int, route: str = "items", timeout: float = 10) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = self.counts(route)
            if sum(counts.values()) >= total:
                return counts
            time.sleep(0.05)
        return counts
