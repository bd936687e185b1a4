"""Small helpers shared by test packages (importable: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jwt
import pytest


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
