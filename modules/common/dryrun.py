"""Shadow dry runs: a mirrored write that runs without touching production state.

The gateway's shadow mirror (:mod:`gateway.shadow.mirror`) marks a copy of an unsafe request
with ``x-gateway-shadow: dry-run`` — and strips that header from every client request, so
only its own copies carry it. A module that honours the marker passes :func:`flag_dry_run`
as its ``ContractApp``'s ``dry_run`` (which also declares the support the mirror checks
for) and consults :data:`DRY_RUN` where it writes: admin rolls its transaction back,
chat-core rolls back the message insert and delivers nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from starlette.types import Scope

MARKER = b"x-gateway-shadow"

#: True for the duration of a dry-run request.
DRY_RUN: ContextVar[bool] = ContextVar("shadow_dry_run", default=False)


async def flag_dry_run(scope: Scope) -> Callable[[], None]:
    """``ContractApp``'s ``dry_run`` that sets :data:`DRY_RUN` for the request."""
    token = DRY_RUN.set(True)
    return lambda: DRY_RUN.reset(token)
