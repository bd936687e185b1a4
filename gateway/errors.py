"""The gateway's exceptions, in one tree.

::

    GatewayError
    ├── ConfigError            routes.yaml refused: every ConfigIssue at once, with file and line
    ├── UnknownRouteError      a control request names a route that does not exist
    ├── StoreUnavailable       the weight store (Redis) cannot take a change right now
    └── ChangeRefused          a control request that cannot be done as asked (``status``)

Upstream failures have their own tree in :mod:`gateway.upstream` (``UpstreamError`` with a
``stage``), mapped to a client answer in exactly one place: :func:`gateway.proxy_http.
upstream_failure_response`. Errors a client sees use the contract's shape
``{"error": {"code", "message"}}``, built by :func:`error_body`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is, what is wrong, and how to fix it."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A config was refused; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class UnknownRouteError(GatewayError):
    pass


class StoreUnavailable(GatewayError):
    pass


class ChangeRefused(GatewayError):
    """A control change refused for a reason the caller can fix; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# Contract error codes by status (legacy-api.md §1), plus the gateway's own 502/504.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}

JSON_CONTENT_TYPE = b"application/json; charset=utf-8"


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """The contract's error body for ``status``."""
    return orjson.dumps({"error": {"code": code or ERROR_CODES[status], "message": message}})
