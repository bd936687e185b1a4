"""The contract's errors (legacy-api.md §1) and nothing else.

Exception tree::

    Exception
     └── ApiError(status, code, message)     -> {"error": {"code", "message"}}

Raise the helper for the case (``raise not_found("no such session")``) and let the
module's HTTP layer turn it into a response with :func:`error_response`.
"""

from __future__ import annotations

from starlette.responses import Response


class ApiError(Exception):
    """An answer in the contract's error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str = "bad request") -> ApiError:
    return ApiError(400, "bad_request", message)


def unauthorized(message: str = "unauthorized") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "forbidden") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(message: str = "conflict") -> ApiError:
    return ApiError(409, "conflict", message)


def payload_too_large(message: str = "request body over 1 MiB") -> ApiError:
    return ApiError(413, "payload_too_large", message)


def upstream_error(message: str = "the AI provider failed") -> ApiError:
    return ApiError(502, "upstream_error", message)


def internal(message: str = "internal error") -> ApiError:
    return ApiError(500, "internal", message)


def error_body(exc: ApiError) -> dict[str, object]:
    return {"error": {"code": exc.code, "message": exc.message}}


def error_response(exc: ApiError) -> Response:
    """The JSON response for ``exc`` (contract content type and serialisation)."""
    from modules.common.http import json_response  # http imports errors

    return json_response(error_body(exc), status=exc.status)
