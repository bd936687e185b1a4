"""Bearer-token authentication exactly as the legacy services do it (legacy-api.md §1, §6).

The legacy services call ``jsonwebtoken.verify(token, JWT_SECRET)`` with its defaults;
this reproduces the observable rules rather than PyJWT's (which checks ``aud`` when
present, has its own type rules for ``iat``, and accepts HS384/HS512):

- the header value is exactly ``Bearer <token>`` (case-sensitive, one space);
- the token is three base64url segments (``jws``'s ``isValidJws``), ``alg`` is ``HS256``
  and the signature segment equals the canonical base64url HMAC-SHA256 (``jws`` compares
  the strings);
- ``exp`` is required and a number (not a boolean), expired when
  ``floor(now) >= exp`` (no clock tolerance); ``nbf`` if present must be a number and not
  in the future; ``aud`` / ``iss`` are not checked;
- ``sub`` is a non-empty string and ``role`` one of ``customer``, ``agent``, ``admin``.

Example::

    user = authenticate(request.headers.get("authorization"), settings.jwt_secret_key)
    user.sub, user.role
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from modules.common.errors import ApiError, unauthorized
from modules.common.jsfmt import JSONError, js_loads

log = logging.getLogger("modules.auth")

Role = Literal["customer", "agent", "admin"]
ROLES: tuple[Role, ...] = ("customer", "agent", "admin")

_JWS = re.compile(r"^[a-zA-Z0-9\-_]+?\.[a-zA-Z0-9\-_]+?\.([a-zA-Z0-9\-_]+)?$")
_warned_no_secret = False


@dataclass(frozen=True)
class User:
    """The caller, from a verified token."""

    sub: str
    role: Role


class InvalidToken(Exception):
    """The token does not verify; the message says why (logs only, never the client)."""


def _b64url_decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("bad base64url") from exc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(segment: str) -> Any:
    try:
        return js_loads(_b64url_decode(segment))
    except JSONError as exc:
        raise InvalidToken("segment is not JSON") from exc


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# Tokens that passed every check but the clock's, with what the clock checks need: a client
# sends the same token with every request, and verifying it again (two base64 and JSON
# decodes and an HMAC) was a fifth of a session GET's own CPU (bench/README.md). Bounded;
# cleared whole when full. nbf and exp are checked again on every use.
_VERIFIED_MAX = 4096
_verified: dict[tuple[str, str], tuple[User, float | None, float]] = {}


def verify_token(token: str, secret: str, *, now: float | None = None) -> User:
    """Verify ``token`` as legacy does; raise :class:`InvalidToken` otherwise."""
    hit = _verified.get((token, secret))
    if hit is not None:
        user, nbf, exp = hit
        clock = math.floor(time.time() if now is None else now)
        if nbf is not None and nbf > clock:
            raise InvalidToken("not active")
        if clock >= exp:
            raise InvalidToken("expired")
        return user
    user, nbf, exp = _verify_uncached(token, secret, now)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()
    _verified[(token, secret)] = (user, nbf, exp)
    return user


def _verify_uncached(
    token: str, secret: str, now: float | None
) -> tuple[User, float | None, float]:
    if not _JWS.match(token):
        raise InvalidToken("not a JWS")
    header_seg, payload_seg, signature = token.split(".")
    header = _json_segment(header_seg)
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidToken("alg is not HS256")
    expected = _b64url(
        hmac.new(
            secret.encode("utf-8"), f"{header_seg}.{payload_seg}".encode("ascii"), hashlib.sha256
        ).digest()
    )
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("bad signature")
    payload = _json_segment(payload_seg)
    if not isinstance(payload, dict):
        raise InvalidToken("payload is not an object")
    clock = math.floor(time.time() if now is None else now)
    if "nbf" in payload:
        if not _is_number(payload["nbf"]):
            raise InvalidToken("invalid nbf")
        if payload["nbf"] > clock:
            raise InvalidToken("not active")
    exp = payload.get("exp")
    if not _is_number(exp):
        raise InvalidToken("exp missing or not a number")
    if clock >= cast(float, exp):
        raise InvalidToken("expired")
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("sub is not a non-empty string")
    role = payload.get("role")
    if role not in ROLES:
        raise InvalidToken("role is not customer, agent or admin")
    nbf = cast(float, payload["nbf"]) if "nbf" in payload else None
    return User(sub=sub, role=cast(Role, role)), nbf, cast(float, exp)


def authenticate(header_value: str | None, secret: str | None) -> User:
    """The caller of a request from its ``Authorization`` header, or a 401 :class:`ApiError`.

    Without a secret every request is 401 (and a warning is logged once per process).
    """
    global _warned_no_secret
    if not secret:
        if not _warned_no_secret:
            _warned_no_secret = True
            log.warning("JWT_SECRET_KEY is not set: every authenticated request answers 401")
        raise unauthorized("authentication is not configured")
    if header_value is None:
        raise unauthorized("missing Authorization header")
    if not header_value.startswith("Bearer "):
        raise unauthorized("Authorization is not 'Bearer <token>'")
    try:
        return verify_token(header_value[len("Bearer ") :], secret)
    except InvalidToken as exc:
        raise unauthorized(f"invalid token: {exc}") from None


__all__ = ["ROLES", "ApiError", "InvalidToken", "Role", "User", "authenticate", "verify_token"]
