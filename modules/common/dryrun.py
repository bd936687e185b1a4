"""Shadow dry runs: a mirrored write that runs without touching production state.

The gateway's shadow mirror (:mod:`gateway.shadow.mirror`) marks a copy of an unsafe request
with ``x-gateway-shadow: dry-run`` — and strips that header from every client request, so
only its own copies carry it. A module that honours the marker wraps its app with
:func:`honour_dry_run` (which also declares the support the mirror checks for) and consults
:data:`DRY_RUN` where it writes: admin rolls its transaction back, chat-core rolls back the
message insert and delivers nothing.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

MARKER = b"x-gateway-shadow"

#: True for the duration of a dry-run request.
DRY_RUN: ContextVar[bool] = ContextVar("shadow_dry_run", default=False)


def honour_dry_run(app: ASGIApp) -> ASGIApp:
    """``app``, with :data:`DRY_RUN` set for HTTP requests marked as dry runs."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for k, v in scope["headers"]:
                if k == MARKER and v == b"dry-run":
                    token = DRY_RUN.set(True)
                    try:
                        await app(scope, receive, send)
                    finally:
                        DRY_RUN.reset(token)
                    return
        await app(scope, receive, send)

    wrapped.shadow_dry_run = True  # type: ignore[attr-defined]
    return wrapped
