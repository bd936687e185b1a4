"""Admin tokens: who may use the control API, and under which name the audit records them.

``GATEWAY_ADMIN_TOKEN`` is the token named ``admin``; ``GATEWAY_ADMIN_TOKENS`` adds named
ones (``"alice:tok1,bob:tok2"``). A request presents ``Authorization: Bearer <token>``;
it is compared with every configured token by :func:`hmac.compare_digest` (constant time,
and all of them, so the timing tells nothing about which one nearly matched). Tokens are
never logged; only their names are.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Tokens:
    named: tuple[tuple[str, bytes], ...]  # (name, token)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tokens:
        out: list[tuple[str, bytes]] = []
        single = env.get("GATEWAY_ADMIN_TOKEN", "").strip()
        if single:
            out.append(("admin", single.encode()))
        for item in env.get("GATEWAY_ADMIN_TOKENS", "").split(","):
            if not item.strip():
                continue
            name, sep, token = item.strip().partition(":")
            if not sep or not name.strip() or not token.strip():
                raise TokenConfigError(
                    "GATEWAY_ADMIN_TOKENS must look like 'alice:token1,bob:token2' "
                    "(an entry has no name or no token)"
                )
            out.append((name.strip(), token.strip().encode()))
        return cls(tuple(out))

    @property
    def configured(self) -> bool:
        return bool(self.named)

    def who(self, authorization: str | None) -> str | None:
        """The token's name for an ``Authorization`` header value, or None."""
        if not authorization:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        given = presented.strip().encode()
        found: str | None = None
        for name, token in self.named:
            if hmac.compare_digest(given, token) and found is None:
                found = name
        return found
