"""The split decision: which side answers a request. Pure functions, no I/O.

A route with a module sends a request to the new side iff ``bucket(key) < new_basis``,
where ``new_basis`` is ``new_percent × 100`` and :func:`bucket` is a stable hash of the
sticky key into 10 000 buckets. The hash takes no route or replica input, so one user is
in the same cohort on every route, every replica and after every restart, and raising a
percentage only ever moves keys from legacy to new.

The sticky key (``Route.sticky``) is the JWT ``sub`` by default, read *without* verifying
the signature (the services verify it; the gateway only needs a stable key, and a forged
``sub`` only picks a side, never grants access). A request with no usable key falls back
to the client's address as the gateway sees it (``scope["client"]``); ``sticky: none``
draws a fresh bucket per request.

Testers may force a side with a header carrying a token signed with the ops secret
(:func:`mint_force_token`); anything unsigned, tampered with or expired is ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import time
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, unquote

import orjson

from .config import Sticky

BUCKETS = 10_000
Side = Literal["legacy", "new"]


def bucket(key: str) -> int:
    """Stable bucket of ``key`` in 0..9 999 (BLAKE2b, identical on every replica)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def goes_new(new_basis: int, key: str | None) -> bool:
    """True when a request with this key goes to the new side at ``new_basis``/10 000."""
    if new_basis <= 0:
        return False
    if new_basis >= BUCKETS:
        return True
    b = random.randrange(BUCKETS) if key is None else bucket(key)
    return b < new_basis


@lru_cache(maxsize=8192)
def jwt_sub(token: str) -> str | None:
    """The ``sub`` claim of a JWT, unverified; None for anything that is not one."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return None
    if isinstance(claims, dict):
        sub = claims.get("sub")
        if isinstance(sub, str) and sub:
            return sub
    return None


def _bearer(value: bytes) -> str | None:
    if value[:7] == b"Bearer ":
        return value[7:].decode("latin-1").strip() or None
    return None


def _query_value(query_string: bytes, name: str) -> str | None:
    if not query_string:
        return None
    for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if k == name:
            return v or None
    return None


def _cookie_value(header: bytes, name: str) -> str | None:
    for part in header.decode("latin-1").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return unquote(v.strip().strip('"')) or None
    return None


def sticky_key(
    sticky: Sticky,
    headers: list[tuple[bytes, bytes]],
    query_string: bytes,
    params: dict[str, str],
    *,
    websocket: bool = False,
) -> str | None:
    """The split key of a request, or None when it has none (caller falls back)."""
    kind = sticky.kind
    if kind == "jwt.sub":
        if websocket:  # the legacy services take ?token= before the header
            token = _query_value(query_string, "token")
            if token is not None:
                return jwt_sub(token)
        for k, v in headers:
            if k == b"authorization":
                token = _bearer(v)
                return jwt_sub(token) if token else None
        return None
    if kind == "header":
        want = sticky.name.encode("latin-1")
        for k, v in headers:
            if k == want:
                return v.decode("latin-1") or None
        return None
    if kind == "cookie":
        for k, v in headers:
            if k == b"cookie" and (found := _cookie_value(v, sticky.name)) is not None:
                return found
        return None
    if kind == "path":
        return params.get(sticky.name) or None
    if kind == "query":
        return _query_value(query_string, sticky.name)
    return None  # "none"


# --------------------------------------------------------------------------- force token

_FORCE_VERSION = "v1"


def _sign(secret: bytes, message: str) -> str:
    mac = hmac.new(secret, message.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def mint_force_token(secret: str, side: Side, ttl: float, *, now: float | None = None) -> str:
    """A token that forces ``side`` until ``now + ttl``: ``v1.<side>.<exp>.<hmac>``.

    >>> mint_force_token("s3cret", "new", 3600, now=0)
    'v1.new.3600.…'  # doctest: +SKIP
    """
    exp = int((time.time() if now is None else now) + ttl)
    body = f"{_FORCE_VERSION}.{side}.{exp}"
    return f"{body}.{_sign(secret.encode('utf-8'), body)}"


def check_force_token(
    secret: str | None, token: str, *, now: float | None = None
) -> tuple[Side | None, str]:
    """(side, "ok") for a valid token, else (None, reason) — reason labels a metric."""
    if not secret:
        return None, "disabled"
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != _FORCE_VERSION or parts[1] not in ("legacy", "new"):
        return None, "malformed"
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(secret.encode("utf-8"), body), parts[3]):
        return None, "bad_signature"
    try:
        exp = int(parts[2])
    except ValueError:
        return None, "malformed"
    if exp <= (time.time() if now is None else now):
        return None, "expired"
    side: Side = "new" if parts[1] == "new" else "legacy"
    return side, "ok"
