"""The executable contract: black-box tests of ``shared/contract/legacy-api.md``.

Every test in ``tests/contract`` talks HTTP / SSE / WebSocket to a :class:`Target` and
never imports service code, so the same tests run against every way of serving the
contract:

- ``legacy``: the four legacy Node services of ``deploy/legacy`` (``legacy_stack``);
- later ``gateway-0`` / ``gateway-100`` …: the gateway in front of legacy or of the Python
  modules. A gateway integration adds an entry to :data:`TARGETS`; pick targets with
  ``CONTRACT_TARGETS=legacy,gateway-100`` (comma-separated, default all four).

Storage assertions (Redis keys, MySQL rows) go through ``target.stack``: both sides share
the same Redis database and MariaDB database, which is the point of the storage contract.

Plain helpers (``auth``, ``assert_error``, regexes, ``sse_events``) are in
``contract_helpers.py`` beside this file: ``from contract_helpers import auth``.

Isolation: tests share one stack per session, and Redis pub/sub channels are shared by all
database numbers, so a test never reuses a user id or session id: take fresh ones from
``uid()`` and mark provider requests with a unique string (``marker()``).

Example::

    def test_health_is_ok(target, http):
        r = http.get(f"{target.session}/health")
        assert r.json() == {"status": "ok", "service": "chat-session"}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import gateway_targets
import httpx
import pytest
from contract_helpers import last_user_content, new_marker, new_uid, quiet_jwt

if TYPE_CHECKING:
    # tests/ has no __init__.py: the top conftest is not importable by a stable name.
    from tests.conftest import LegacyStack

# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Where the contract is served: base URLs of the four services, and the shared stack.

    ``core2`` is a second chat-core instance on the same Redis (cross-instance delivery).
    """

    name: str
    core: str
    core2: str
    ai: str
    session: str
    admin: str
    stack: LegacyStack

    def ws_url(self, *, second: bool = False, token: str | None = None, path: str = "/ws") -> str:
        """``ws://host:port/ws?token=…`` on chat-core (``second=True``: the other instance)."""
        base = self.core2 if second else self.core
        url = "ws" + base.removeprefix("http") + path
        if token is not None:
            url += "?token=" + quote(token, safe="")
        return url


def _legacy(stack: LegacyStack, request: pytest.FixtureRequest) -> Target:
    return Target(
        name="legacy",
        core=stack.core,
        core2=stack.core2,
        ai=stack.ai,
        session=stack.session,
        admin=stack.admin,
        stack=stack,
    )


#: Registry of targets by name. A factory gets the legacy stack (always running: the
#: gateway fronts it, and storage is shared) and the pytest request (for more fixtures
#: via ``request.getfixturevalue``).
TARGETS: dict[str, Callable[[LegacyStack, pytest.FixtureRequest], Target]] = {
    "legacy": _legacy,
}
gateway_targets.register(TARGETS, Target)  # gateway-0, gateway-50, gateway-100


#: The whole suite runs against legacy directly and through the gateway at 0, 50 and 100 %.
DEFAULT_TARGETS = "legacy,gateway-0,gateway-50,gateway-100"


def _target_names() -> list[str]:
    raw = os.environ.get("CONTRACT_TARGETS", DEFAULT_TARGETS)
    return [n.strip() for n in raw.split(",") if n.strip()]


@pytest.fixture(scope="session", params=_target_names())
def target(request: pytest.FixtureRequest, legacy_stack: LegacyStack) -> Target:
    name = request.param
    if name not in TARGETS:
        pytest.fail(f"CONTRACT_TARGETS names {name!r}; known targets: {sorted(TARGETS)}")
    return TARGETS[name](legacy_stack, request)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One plain HTTP client: no proxies from the environment, no redirects, 15 s timeout."""
    with httpx.Client(trust_env=False, timeout=15, follow_redirects=False) as client:
        yield client


@pytest.fixture
def uid() -> Callable[[], str]:
    """Factory of unique user ids (``u-`` + 12 hex digits)."""
    return new_uid


@pytest.fixture
def token(target: Target) -> Callable[..., str]:
    """``token(sub=…, role="customer", **kw)``: a JWT signed with the target's secret.

    ``sub`` defaults to one unique id per test (so ``token()`` twice is the same user);
    ``**kw`` goes to :func:`tests.conftest.make_token` (``exp_in``, ``algorithm``,
    ``secret``, extra claims).
    """
    # make_token lives in tests/conftest.py, whose module name ("conftest") is taken by
    # this file once both are loaded: reach it through the globals of LegacyStack's code.
    make_token = type(target.stack).__init__.__globals__["make_token"]
    default_sub = new_uid()

    def mint(sub: object = default_sub, role: str = "customer", **kw: Any) -> str:
        kw.setdefault("secret", target.stack.jwt_secret)
        with quiet_jwt():
            return str(make_token(sub, role, **kw))

    return mint


@pytest.fixture
def marker() -> Callable[[], str]:
    """Factory of unique marker strings to find a test's provider requests."""
    return new_marker


@pytest.fixture
def provider_requests(target: Target) -> Callable[[str], list[dict[str, Any]]]:
    """``provider_requests(marker)``: the fake provider's recorded requests (oldest first)
    whose last user message contains ``marker``; each ``{"path", "headers", "body"}`` with
    the ``authorization`` header replaced by ``"authOk": bool``."""

    def fetch(mark: str) -> list[dict[str, Any]]:
        with httpx.Client(trust_env=False, timeout=5) as c:
            r = c.get(f"{target.stack.provider}/_fake/requests")
        r.raise_for_status()
        return [
            rec for rec in r.json()["data"] if mark in (last_user_content(rec.get("body")) or "")
        ]

    return fetch
