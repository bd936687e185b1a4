"""Small helpers shared by test packages (importable: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any

import jwt
import pytest


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports of 127.0.0.1, all held until every one is picked (picked
    one at a time, a port closed a moment before can be handed out again: a gateway given
    the same client and admin port serves its admin app on both)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def make_token_for(stack: Any, sub: str, role: str = "customer", exp_in: int = 3600) -> str:
    """A JWT for ``sub`` signed with the legacy stack's secret."""
    return jwt.encode(
        {"sub": sub, "role": role, "exp": int(time.time()) + exp_in}, stack.jwt_secret
    )


def services_required() -> bool:
    return os.environ.get("CHATGW_REQUIRE_SERVICES") == "1"


def need(ok: bool, reason: str) -> None:
    """Skip (or, in CI, fail) the calling test when a required service is absent."""
    if ok:
        return
    if services_required():
        pytest.fail(f"required service missing in CI: {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------- WebSocket frames

#: How long a test waits for one WebSocket frame before failing.
RECV_TIMEOUT = 5.0


def send(ws: Any, frame: Any) -> None:
    """Send one JSON text frame (the contract's frames are all JSON)."""
    ws.send(json.dumps(frame))


def recv(ws: Any, timeout: float = RECV_TIMEOUT) -> Any:
    """The next frame, decoded as JSON (fails the test after ``timeout`` seconds)."""
    return json.loads(ws.recv(timeout=timeout))
