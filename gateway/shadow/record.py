"""Sampled, sanitised recording of real traffic as a replay script (JSONL).

Off by default. ``settings.record`` in routes.yaml turns it on::

    settings:
      record: {path: /var/lib/chatgw/traffic.jsonl, percent: 1, redact_fields: [password]}

Each recorded request becomes one line of the format :mod:`gateway.shadow.replay` reads::

    {"name": "session-item GET /api/sessions/…", "kind": "http", "service": "chat-session",
     "request": {"method": "GET", "path": "/api/sessions/…",
                 "headers": {"authorization": "Bearer {{token:customer:u-1}}"}},
     "recorded": {"route": "session-item", "side": "legacy", "status": 200, "at": 1700000000.0}}

Sanitising: a bearer JWT is replaced by a ``{{token:ROLE:SUB}}`` placeholder (replay mints
a fresh token with its own secret, so no credential is ever written); cookies, ``?token=``
and the ``redact_fields`` of the body (at any depth) are replaced by ``[redacted]``. Lines
are written by the shadow workers, never on the client's path.
"""

from __future__ import annotations

import base64
import contextlib
import random
import time
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..config import RecordSettings
from ..split import BUCKETS
from .results import REDACTED, SECRET_HEADERS, _redact_value, redact_query

if TYPE_CHECKING:
    from .mirror import Tap

_SKIP = frozenset({"x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                   "content-length", "host", "x-gateway-shadow"})  # fmt: skip


def token_placeholder(authorization: str) -> str:
    """``Bearer <jwt>`` → ``Bearer {{token:ROLE:SUB}}`` from the (unverified) claims."""
    scheme, _, token = authorization.partition(" ")
    parts = token.split(".")
    if scheme != "Bearer" or len(parts) != 3:
        return REDACTED
    try:
        pad = "=" * (-len(parts[1]) % 4)
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (ValueError, orjson.JSONDecodeError):
        return REDACTED
    role, sub = claims.get("role"), claims.get("sub")
    if not isinstance(role, str) or not isinstance(sub, str) or ":" in role + sub or "}" in sub:
        return REDACTED
    return f"Bearer {{{{token:{role}:{sub}}}}}"


def sanitise_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, fields: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method, "path": redact_query(target)}
    hdrs: dict[str, str] = {}
    for k, v in headers:
        if k in _SKIP:
            continue
        if k == "authorization":
            hdrs[k] = token_placeholder(v)
        elif k in SECRET_HEADERS:
            hdrs[k] = REDACTED
        else:
            hdrs[k] = v
    out["headers"] = hdrs
    if body:
        try:
            out["json"] = _redact_value(orjson.loads(body), frozenset(fields))
        except orjson.JSONDecodeError:
            out["body"] = REDACTED if fields else body.decode("utf-8", "replace")
    return out


class Recorder:
    def __init__(self) -> None:
        self.settings: RecordSettings | None = None
        self.max_body = 64 * 1024
        self._fh: IO[bytes] | None = None
        self.written = 0

    def configure(self, settings: RecordSettings | None) -> None:
        if settings != self.settings:
            self.close()
        self.settings = settings

    def sampled(self) -> bool:
        s = self.settings
        return s is not None and random.random() * BUCKETS < s.basis

    def write(self, tap: Tap) -> None:
        s = self.settings
        if s is None:
            return
        if self._fh is None:
            self._fh = open(s.path, "ab")  # noqa: SIM115 - kept open, closed in close()
        headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in tap.headers]
        ctype = dict(tap.resp_headers).get("content-type", "")
        line = {
            "name": f"{tap.route.name} {tap.scope['method']} {tap.scope['path']}",
            "kind": "sse" if "text/event-stream" in ctype else "http",
            "service": tap.route.legacy,
            "request": sanitise_request(
                tap.scope["method"],
                tap.target.decode("latin-1"),
                headers,
                b"".join(tap.body),
                s.redact_fields,
            ),
            "recorded": {
                "route": tap.route.name,
                "side": tap.primary,
                "status": tap.status,
                "at": round(time.time(), 3),
            },
        }
        self._fh.write(orjson.dumps(line) + b"\n")
        self._fh.flush()
        self.written += 1

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
