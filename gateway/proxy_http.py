"""Forward one HTTP request to a legacy upstream, streaming both ways.

The request body is passed on as it arrives (bounded by the route's ``body_limit``); the
response body is sent to the client chunk by chunk as the upstream produces it, so
server-sent events are flushed event by event. Small responses with a known length
(≤ 64 KiB) are read whole and sent in one go: under :mod:`gateway.http11`, head and body
in one call and one write (``CoalescingCycle.respond``).

Upstream failures are mapped to the client's answer in exactly one place,
:func:`failure_status`, and the same stage labels the metric. A response that breaks after
its head went out is *aborted* (the connection is dropped), never ended as if complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from .errors import JSON_CONTENT_TYPE, error_body
from .headers import HOP_BY_HOP, end_to_end
from .http11 import CoalescingCycle
from .upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamExchange,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("chatgw.proxy")

SMALL_BODY = 64 * 1024

# The server adds its own Date to every answer (module or proxied alike); a forwarded one
# would make two.
_RESPONSE_DROP = frozenset({b"date"})
_RESPONSE_SKIP = HOP_BY_HOP | _RESPONSE_DROP
# Connection values that name no header beyond the hop-by-hop ones (Node sends keep-alive)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], int]:
    """An upstream response's headers for the client, and its Content-Length (-1: none).

    Names lower-cased (they arrive as the upstream spelled them, Node's "Connection",
    and the hop-by-hop rules and ASGI both want them so); hop-by-hop headers and the
    upstream's Date dropped. One pass for the usual head; a Connection naming other
    headers, or Transfer-Encoding, takes :func:`gateway.headers.end_to_end`'s rules.
    """
    out = []
    length = -1
    general = False
    for name, value in raw:
        k = name.lower()
        if k in _RESPONSE_SKIP:
            if k == b"transfer-encoding" or (
                k == b"connection" and value.strip().lower() not in _PLAIN_CONNECTION
            ):
                general = True
            continue
        if k == b"content-length":
            length = int(value) if value.isdigit() else -1
        out.append((k, value))
    if general:  # rare
        out = end_to_end([(k.lower(), v) for k, v in raw], _RESPONSE_DROP)
        length = next((int(v) for k, v in out if k == b"content-length" and v.isdigit()), -1)
    return out, length


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def failure_status(exc: UpstreamError) -> tuple[int, str]:
    """The client's answer to an upstream failure: refused → 502, timed out → 504."""
    if isinstance(exc, UpstreamTimeout):
        return 504, "the upstream did not answer in time"
    if isinstance(exc, UpstreamConnectError):
        return 502, "the upstream refused the connection"
    return 502, "the upstream failed"


def json_response_messages(
    status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = [
        (b"content-type", JSON_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


async def send_error(
    send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]], code: str | None = None
) -> int:
    start, body = json_response_messages(status, error_body(status, message, code), extra)
    await send(start)
    await send(body)
    return len(body["body"])


class _Watch:
    """Notices a client that goes away while we wait on the upstream, and cancels us.

    Armed only once the request body has been read (so it never races the body reader)
    and started only after :data:`WATCH_AFTER` seconds, so that quick requests never pay
    for a task; nor for a timer: the watches armed on a loop wait in one
    :class:`_WatchQueue`.
    """

    __slots__ = ("_armed", "_loop", "_receive", "_task", "done", "gone", "watcher")

    def __init__(self, receive: Receive, loop: asyncio.AbstractEventLoop) -> None:
        self._receive: Receive | None = receive
        self._loop = loop
        self._task = asyncio.current_task(loop)  # (with the loop: no getpid() syscall)
        self._armed = False
        self.watcher: asyncio.Task[None] | None = None
        self.done = False
        self.gone = False

    def arm(self) -> None:
        if not self._armed and not self.done:
            self._armed = True
            _WatchQueue.of(self._loop).add(self)

    def start(self) -> None:
        if not self.done:
            self.watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        receive = self._receive
        while not self.done and receive is not None:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not self.done and self._task is not None:
                    self.gone = True
                    self._task.cancel()
                return

    def finish(self) -> None:
        self.done = True
        # It may wait in the queue up to WATCH_AFTER: let the request's objects go now (kept
        # alive that long, ~1 000 cycles with their scopes cost ~3 µs per request at c=50).
        self._task = self._receive = None
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


WATCH_AFTER = 0.05


class _WatchQueue:
    """The watches armed on one loop, oldest first, and one timer for all of them.

    A timer per request (a libuv handle allocated, started, stopped and closed for the
    ~99 % of requests done within 50 ms) was ~4 µs of every proxied request at one
    connection (bench/README.md). Here arming is an append; the timer fires for the oldest
    watch, drops the finished ones and starts those that are due.
    """

    __slots__ = ("armed", "loop", "queue")

    _current: _WatchQueue | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _WatchQueue:
        """The queue of ``loop``: a process serves from one loop. (Another loop gets a new
        queue; one left behind with watches in it keeps its timer, so none is lost.)"""
        queue = cls._current
        if queue is None or queue.loop is not loop:
            queue = cls._current = cls(loop)
        return queue

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[tuple[float, _Watch]] = deque()
        self.armed = False

    def add(self, watch: _Watch) -> None:
        self.queue.append((self.loop.time() + WATCH_AFTER, watch))
        if not self.armed:
            self.armed = True
            self.loop.call_later(WATCH_AFTER, self.run)

    def run(self) -> None:
        self.armed = False
        queue = self.queue
        # (libuv's timers count whole milliseconds: one may fire just before its time)
        now = self.loop.time() + 0.002
        while queue:
            due, watch = queue[0]
            if watch.done:
                queue.popleft()
            elif due <= now:
                queue.popleft()
                watch.start()
            else:
                self.armed = True
                self.loop.call_at(due, self.run)
                return


def request_target(scope: Scope) -> bytes:
    """The origin-form target for the upstream: the raw path and the query."""
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    qs: bytes = scope.get("query_string", b"")
    return target + b"?" + qs if qs else target


async def _body_stream(
    first: bytes, receive: Receive, limit: int, watch: _Watch
) -> AsyncIterator[bytes]:
    seen = len(first)
    if first:
        yield first
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            watch.arm()
            return


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    pool: UpstreamPool,
    headers: list[tuple[bytes, bytes]],
    extra: list[tuple[bytes, bytes]],
    *,
    limit: int,
    timeout: float,
    on_error: Any,
    begun: UpstreamResponse | UpstreamError | None = None,
) -> tuple[int, int]:
    """Proxy the request; returns (status, response bytes). Status 499: client went away.

    ``headers`` are the upstream request headers (already end-to-end), ``extra`` the
    headers added to the client's response. ``on_error(stage)`` counts upstream failures.
    ``begun``: the answer (or failure) of a request :class:`DirectForward` already sent.
    """
    method: str = scope["method"]
    watch = _Watch(receive, pool.loop)
    started = False
    try:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return 499, 0
        first: bytes = msg.get("body", b"")
        body: bytes | AsyncIterator[bytes]
        if msg.get("more_body", False):
            body = _body_stream(first, receive, limit, watch)
        else:
            if len(first) > limit:
                raise BodyTooLarge
            body = first
            watch.arm()
        try:
            if begun is None:
                resp = await pool.request(
                    method, request_target(scope), headers, body, read_timeout=timeout
                )
            elif isinstance(begun, UpstreamError):
                raise begun
            else:
                resp = begun
        except UpstreamError as exc:
            on_error(exc.stage)
            status, message = failure_status(exc)
            return status, await send_error(send, status, message, extra)
        out, length = response_headers(resp.headers)
        out.extend(extra)
        try:
            if 0 <= length <= SMALL_BODY or method == "HEAD":
                data = await resp.read()
                started = watch.done = True
                cycle = getattr(send, "__self__", None)
                if type(cycle) is CoalescingCycle:  # gateway.http11's, and no tap on send
                    await cycle.respond(resp.status, out, data)
                    return resp.status, len(data)
                await send({"type": "http.response.start", "status": resp.status, "headers": out})
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return resp.status, len(data)
            started = True
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            sent = 0
            async for chunk in resp:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return resp.status, sent
        except UpstreamError as exc:
            on_error(exc.stage)
            if not started:
                status, message = failure_status(exc)
                return status, await send_error(send, status, message, extra)
            # Abort: returning without the final message makes the server drop the
            # connection, so the client cannot take a truncated body for a whole one.
            log.warning("upstream broke mid-body (%s): response aborted", exc.stage)
            return 502, 0
        finally:
            await resp.aclose()
    except BodyTooLarge:
        if started:
            return 413, 0
        return 413, await send_error(send, 413, "request body too large", extra)
    except ClientGone:
        return 499, 0
    except asyncio.CancelledError:
        if watch.gone:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return 499, 0
        raise
    finally:
        watch.finish()


class DirectOwner(Protocol):
    """What :class:`DirectForward` reports to (the gateway's request)."""

    extra: list[tuple[bytes, bytes]]

    def answered(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The answer that went out (for a shadow tap)."""

    def done(self, status: int, n: int) -> None:
        """The request is over: count and log it."""

    def resume(self, started: UpstreamResponse | UpstreamError | None) -> Any:
        """An ASGI app that goes on with :func:`forward` (``None``: send the request again)."""


class DirectForward(UpstreamExchange):
    """A proxied request served from callbacks, without a task or a coroutine.

    The usual proxied request (no request body, an idle keep-alive connection to the
    upstream, a small answer with a Content-Length in one read, served by
    :mod:`gateway.http11`) needs none of what a task is for: the request head is written
    to the upstream as the client's head is parsed, and the answer is written to the
    client (``CoalescingCycle.respond_now``) as the upstream's is parsed. A shadow tap is
    given the answer (``owner.answered``) and the copy submitted once it is out.
    The task, the ASGI messages, the futures and the coroutine frames were about a third
    of the gateway's CPU on this path (bench/README.md).

    Anything else is handed to :func:`forward` in a task at the point it was reached
    (``spawn``), which then behaves exactly as if it had run from the start: a body to
    stream or still to come, an upstream failure (mapped by :func:`failure_status`), a
    reused connection the upstream had closed (sent again), a paused client transport.
    The client leaving first (``cycle.lost``) abandons the upstream connection: 499.
    """

    __slots__ = ("cycle", "owner", "spawn")

    def __init__(
        self, cycle: CoalescingCycle, owner: DirectOwner, spawn: Callable[[Any, Any], None]
    ) -> None:
        super().__init__()
        self.cycle = cycle
        self.owner = owner
        self.spawn = spawn

    def on_event(self, timed_out: bool) -> None:
        error = self.error(timed_out)
        if error is not None:
            stale = self.stale()
            self.abandon()
            self._hand_over(None if stale else error)
            return
        if not self.head_done:
            return
        if not self.complete:  # a body still to come (or to stream): awaited from here on
            self._hand_over(self.response())
            return
        status = self.status
        out, length = response_headers(self.headers)
        body = self.body()
        if length != len(body):  # no (or another) Content-Length: forward() frames it
            self._hand_over(self.response())
            return
        cycle = self.cycle
        if not cycle.can_respond():  # (a paused client transport) forward() awaits the drain
            self._hand_over(self.response())
            return
        # The connection goes back first: a pipelined request started as this answer
        # completes finds it idle.
        self.finish()
        cycle.lost = None
        out.extend(self.owner.extra)
        try:
            cycle.respond_now(status, out, body)
        except Exception:
            # as uvicorn does for an app that fails after starting its response
            log.exception("response from the upstream could not be written")
            cycle.transport.close()
            self.owner.done(502, 0)
            return
        self.owner.answered(status, out, body)
        self.owner.done(status, len(body))

    def client_gone(self) -> None:
        """The client left before its answer: the upstream's is not wanted."""
        self.abandon()
        self.owner.done(499, 0)

    def _hand_over(self, started: UpstreamResponse | UpstreamError | None) -> None:
        self.cycle.lost = None
        self.spawn(self.cycle, self.owner.resume(started))
