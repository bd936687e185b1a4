"""Contract targets served through the gateway: ``gateway-0``, ``gateway-50``, ``gateway-100``.

``gateway-N`` is a real gateway process in front of the legacy stack with the shipped
routes.yaml, every route that has a module at N % new, and the modules configured on the
stack's own Redis, MariaDB database, JWT secret and fake provider — so storage is shared
with legacy exactly as in production. ``core2`` is a second gateway process whose chat-core
upstream is the second chat-core instance (two replicas sharing one hub).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from gateway_process import GatewayProcess, gateway_env, routes_at


def gateway_target(percent: float, target_cls: Any) -> Callable[[Any, pytest.FixtureRequest], Any]:
    def make(stack: Any, request: pytest.FixtureRequest) -> Any:
        workdir = str(request.getfixturevalue("tmp_path_factory").mktemp(f"gw{percent:g}"))
        env = {
            **gateway_env(stack),
            # the two replicas of a target are one fleet; targets are separate fleets
            "CHATGW_CONTROL_PREFIX": f"chatgw-contract-{percent:g}-{os.getpid()}:",
            "CHATGW_STATE_DIR": workdir,
        }
        text = routes_at(percent)
        first = GatewayProcess(text, env, workdir)
        request.addfinalizer(first.stop)
        second = GatewayProcess(text, {**env, "CHAT_CORE_URL": stack.core2}, workdir)
        request.addfinalizer(second.stop)
        return target_cls(
            name=f"gateway-{percent:g}",
            core=first.url,
            core2=second.url,
            ai=first.url,
            session=first.url,
            admin=first.url,
            stack=stack,
        )

    return make


def register(targets: dict[str, Any], target_cls: Any) -> None:
    for percent in (0, 50, 100):
        targets[f"gateway-{percent}"] = gateway_target(percent, target_cls)
