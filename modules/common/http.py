"""The HTTP plumbing every module shares: routing, bodies and responses as legacy does them.

A module declares its routes and gets an ASGI app with the contract's rules
(legacy-api.md §1, §6)::

    async def get_session(req: ApiRequest) -> Response:
        user = req.user()                      # 401 first
        body = await req.json_object()         # then 413, then 400
        return json_response({"ok": True})

    app = ContractApp(
        service="chat-session",
        settings=settings,
        routes=[Route("GET", "/api/sessions/{sessionId}", get_session)],
        lifespan=lifespan,
    )

Rules: ``GET /health`` answers without auth; one trailing slash is tolerated; a known
path with an unrouted method is 404 (not 405); a body over 1 048 576 bytes is 413; an
empty or whitespace body is ``{}``; the body is JSON whatever the ``Content-Type``;
anything but an object is 400; any other exception is 500 ``internal``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modules.common.auth import User, authenticate
from modules.common.config import Settings
from modules.common.dryrun import MARKER as DRY_RUN_MARKER
from modules.common.errors import (
    ApiError,
    bad_request,
    error_response,
    internal,
    not_found,
    payload_too_large,
)
from modules.common.jsfmt import JSONError, js_dumps, js_loads, js_trim

log = logging.getLogger("modules.http")

#: Bodies up to exactly 1 MiB are accepted (legacy-api.md §6).
MAX_BODY = 1_048_576
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


_JSON_CONTENT_TYPE_HEADER = (b"content-type", JSON_CONTENT_TYPE.encode("latin-1"))


class JsonResponse(Response):
    """A JSON body with exactly the head ``Response(body, media_type=JSON_CONTENT_TYPE)``
    gives it (``content-length``, then ``content-type``), built without Starlette's general
    header handling (``init_headers``: ~0.9 µs per answer under load, bench/README.md,
    "The session GET: two coroutine layers and a header step less in the module")."""

    media_type = JSON_CONTENT_TYPE

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        if status_code < 200 or status_code in (204, 304):  # as Response: no length
            self.raw_headers = [_JSON_CONTENT_TYPE_HEADER]
        else:
            self.raw_headers = [(b"content-length", b"%d" % len(body)), _JSON_CONTENT_TYPE_HEADER]


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer serialised as Node's ``JSON.stringify`` (see ``jsfmt.js_dumps``)."""
    if headers is None:
        return JsonResponse(js_dumps(data), status)
    return Response(
        js_dumps(data), status_code=status, headers=headers, media_type=JSON_CONTENT_TYPE
    )


def empty_response(status: int = 204) -> Response:
    """No body, no content type (``res.writeHead(204).end()``)."""
    return Response(b"", status_code=status)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object: empty or whitespace -> ``{}``, else 400."""
    text = raw.decode("utf-8", errors="replace")
    if js_trim(text) == "":
        return {}
    try:
        value = js_loads(text)
    except JSONError:
        raise bad_request("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request("body is not a JSON object")
    return value


class ApiRequest:
    """One request as a handler sees it: path params, query, caller, body."""

    def __init__(
        self, scope: Scope, receive: Receive, params: dict[str, str], settings: Settings
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.settings = settings
        self._user: User | None = None
        self._query: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    def header(self, name: str) -> str | None:
        """The first header ``name`` (case-insensitive), decoded as latin-1 like Node."""
        key = name.lower().encode("latin-1")
        for k, v in self.scope.get("headers", []):
            if k == key or k.lower() == key:  # (names come lower-cased from servers)
                return bytes(v).decode("latin-1")
        return None

    def query(self, name: str) -> str | None:
        """The first value of a query parameter (``URLSearchParams.get``)."""
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = {}
            for k, v in parse_qsl(raw, keep_blank_values=True, encoding="utf-8"):
                self._query.setdefault(k, v)
        return self._query.get(name)

    def user(self) -> User:
        """The authenticated caller (401 :class:`ApiError` otherwise); cached."""
        if self._user is None:
            self._user = authenticate(self.header("authorization"), self.settings.jwt_secret_key)
        return self._user

    async def body(self, limit: int = MAX_BODY) -> bytes:
        """The whole body; 413 as soon as it grows past ``limit`` bytes."""
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise payload_too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise payload_too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (413, then 400 rules of :func:`parse_json_object`)."""
        return parse_json_object(await self.body())


Handler = Callable[[ApiRequest], Awaitable[ASGIApp]]
Lifespan = Callable[[], AbstractAsyncContextManager[None]]
#: A module's shadow dry run (modules.common.dryrun): called for a request marked
#: ``x-gateway-shadow: dry-run`` before it is routed, it returns what undoes it once the
#: answer is out.
DryRun = Callable[[Scope], Awaitable[Callable[[], None]]]


@dataclass(frozen=True)
class Route:
    """``method`` + path template (``{name}`` matches one non-empty segment)."""

    method: str
    path: str
    handler: Handler

    def pattern(self) -> re.Pattern[str]:
        parts = [
            "(?P<" + seg[1:-1] + ">[^/]+)" if seg.startswith("{") else re.escape(seg)
            for seg in self.path.split("/")
        ]
        return re.compile("^" + "/".join(parts) + "$")


_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_uri_component(s: str) -> str:
    """JavaScript's ``decodeURIComponent``: ``ValueError`` where it throws ``URIError``."""
    if "%" not in s:
        return s
    if _BAD_PCT.search(s):
        raise ValueError("malformed percent escape")
    raw = _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), s.encode("utf-8"))
    return raw.decode("utf-8")  # strict: invalid UTF-8 (or a surrogate) raises


def _without_body(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return wrapped


class ContractApp:
    """A module's ASGI app: contract routing and errors, and the module's lifespan.

    ``dry_run``: how the module honours the shadow mirror's dry-run marker (see
    :data:`DryRun`); the app then declares that support (``shadow_dry_run``). Here rather
    than in a wrapping app, whose frame every resume of every request would pass through.
    """

    def __init__(
        self,
        *,
        service: str,
        settings: Settings,
        routes: list[Route],
        lifespan: Lifespan | None = None,
        dry_run: DryRun | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.lifespan = lifespan
        self._dry_run = dry_run
        self.shadow_dry_run = dry_run is not None
        table: dict[str, tuple[re.Pattern[str], dict[str, Handler]]] = {}
        for route in [Route("GET", "/health", self._health), *routes]:
            _pattern, methods = table.setdefault(route.path, (route.pattern(), {}))
            methods[route.method] = route.handler
        self._table = list(table.values())

    async def _health(self, req: ApiRequest) -> Response:
        return json_response({"status": "ok", "service": self.service})

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler and decoded path params, or ``None`` (404) — pure, no I/O."""
        if path.endswith("/") and path != "/":
            path = path[:-1]
        for pattern, methods in self._table:
            m = pattern.match(path)
            if m is not None:
                # HEAD is served by GET routes, the body dropped (as legacy and Express do).
                handler = methods.get("GET" if method == "HEAD" else method)
                if handler is None:
                    return None
                try:
                    params = {k: decode_uri_component(v) for k, v in m.groupdict().items()}
                except ValueError:
                    return None  # decodeURIComponent threw: legacy answers 404
                return handler, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        # Legacy matches the raw (still percent-encoded) path, then decodes each param.
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").split("?", 1)[0] if raw else quote(scope["path"])
        undo = None
        if self._dry_run is not None:
            for k, v in scope["headers"]:
                if k == DRY_RUN_MARKER and v == b"dry-run":
                    undo = await self._dry_run(scope)
                    break
        try:
            try:
                found = self.match(scope["method"], path)
                if found is None:
                    raise not_found(f"no route for {scope['method']} {scope['path']}")
                handler, params = found
                response = await handler(ApiRequest(scope, receive, params, self.settings))
            except ApiError as exc:
                response = error_response(exc)
            except Exception:
                log.exception("unhandled error in %s %s", scope["method"], scope["path"])
                response = error_response(internal())
            if scope["method"] == "HEAD":
                send = _without_body(send)
            await response(scope, receive, send)
        finally:
            if undo is not None:
                undo()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if self.lifespan is None:
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        cm = self.lifespan()
        try:
            await cm.__aenter__()
        except Exception as exc:
            log.exception("%s failed to start", self.service)
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            await cm.__aexit__(None, None, None)
        except Exception as exc:
            await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})
