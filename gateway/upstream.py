"""A lean HTTP/1.1 client for proxying to one upstream, with a keep-alive pool.

Why not httpx or aiohttp: measured on the proxied path (docs PERFORMANCE.md and
``bench/upstream_client.py``), httpx costs ~2 100 µs of CPU per request and aiohttp ~240 µs;
the gateway's budget is ~100 µs for the whole proxied request. This module is an
``asyncio.Protocol`` per connection, ``httptools``' llhttp response parser, a LIFO pool and
no features a proxy must not have (no cookie jar, no redirects, no environment proxies).

Usage::

    pool = UpstreamPool("http://127.0.0.1:3000", connect_timeout=2, read_timeout=30,
                        max_connections=100)
    resp = await pool.request("GET", "/api/rooms?limit=5", [(b"accept", b"*/*")], None)
    async with resp:                    # releases (or closes) the connection
        async for chunk in resp:        # streamed, with backpressure
            ...
    await pool.aclose()

Or, for a request without a body, with no task awaiting it (the gateway's usual proxied
request, ``proxy_http.DirectForward``): ``pool.start(method, target, headers, exchange)``
writes it on an idle connection (``False`` when there is none) and the connection calls
``exchange.on_event(timed_out)`` (an :class:`UpstreamExchange`) on each of its events.

Failures, each with the ``stage`` it happened in (the proxy maps them in one place)::

    UpstreamError                  .stage: "pool" | "connect" | "request" | "response" | "body"
    ├── UpstreamConnectError       refused, unreachable, DNS failure          (stage "connect")
    ├── UpstreamTimeout            no free connection / connect / request write / response
    │                              head / silence between body chunks
    ├── UpstreamProtocolError      malformed response, or a request body that breaks its framing
    └── UpstreamClosed             the upstream dropped the connection before the end

A request written on a *reused* connection that the upstream closed without answering (it
timed the idle connection out as we wrote) is retried once on a new connection, unless its
body was a stream that has already been consumed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable
from contextlib import suppress
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

__all__ = [
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamExchange",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

Stage = Literal["pool", "connect", "request", "response", "body"]
Body = AsyncIterable[bytes] | bytes | bytearray | memoryview | None


class UpstreamError(Exception):
    """Base of upstream failures; ``stage`` says where the exchange broke."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage: Stage = stage


class UpstreamConnectError(UpstreamError):
    """No connection could be opened (refused, unreachable, name not resolved)."""


class UpstreamTimeout(UpstreamError):
    """A wait ran out: pool slot, connect, request write, response head or body silence."""


class UpstreamProtocolError(UpstreamError):
    """The response is not valid HTTP/1.1 (or a request body contradicts its framing)."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before the response was complete."""


# Buffered response bytes above which the socket stops being read (bounded memory for slow
# clients); reading resumes below a quarter of it. uvloop reads at most 256 KiB at a time.
_HIGH_WATER = 256 * 1024
_LOW_WATER = _HIGH_WATER // 4
# Methods whose empty request gets no Content-Length (RFC 9110 §8.6: a user agent SHOULD
# NOT send it when the method has no defined meaning for content and there is none).
_NO_BODY_METHODS = frozenset((b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"))
_METHODS = {m.decode(): m for m in (*_NO_BODY_METHODS, b"POST", b"PUT", b"PATCH")}
# Header names the client owns: Host is added when missing, framing is always ours
# (a caller's Transfer-Encoding or a Content-Length that disagrees with the body would
# desynchronise the connection: request smuggling, RFC 9112 §6.3). Lengths pre-filter.
_OWNED = frozenset((b"host", b"content-length", b"transfer-encoding"))
_OWNED_LENGTHS = frozenset(len(n) for n in _OWNED)
# A read-timeout timer that fires this close to its deadline (seconds) counts as on time.
_TIMER_SLACK = 0.002


class _HeadDone(Exception):
    """Raised inside the parser to stop it after a HEAD response's head."""


class _Unsolicited(Exception):
    """Raised inside the parser when bytes arrive that answer no request."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(False)


def _silence(limit: float, stage: Stage) -> UpstreamTimeout:
    """The read timeout passed: no data for ``limit`` seconds."""
    return UpstreamTimeout(stage, f"no data from upstream for {limit:g}s ({stage})")


def _wake(fut: asyncio.Future[bool] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(True)


class _Connection(asyncio.Protocol):
    """One upstream TCP connection; parser callbacks fill the current exchange's state."""

    __slots__ = (
        "_active",
        "_buffered",
        "_chunks",
        "_closed",
        "_complete",
        "_deadline",
        "_drain_waiter",
        "_error",
        "_exchange",
        "_forgotten",
        "_got_data",
        "_head_done",
        "_head_request",
        "_headers",
        "_idle_since",
        "_in_idle",
        "_interim",
        "_keep_alive",
        "_parser",
        "_paused",
        "_poisoned",
        "_pool",
        "_reason",
        "_reused",
        "_status",
        "_timer",
        "_transport",
        "_waiter",
        "_write_paused",
    )  # fmt: skip

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self._closed = False  # EOF or lost: never reuse
        self._forgotten = False  # no longer counted by the pool
        self._in_idle = False
        self._reused = False
        self._idle_since = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        # The read timeout of the current wait: a deadline, and one timer per connection
        # that is moved only when it would fire too late (see _wait).
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: deque[bytes] = deque()
        self._active = False
        # Instead of a waiter: called on every event of the exchange (see UpstreamPool.start)
        self._exchange: UpstreamExchange | None = None
        self._begin(False)

    def _begin(self, head_request: bool) -> None:
        """Reset the per-exchange state before writing a request."""
        self._head_request = head_request
        self._chunks.clear()
        self._got_data = False
        self._interim = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._keep_alive = False
        self._complete = False
        self._poisoned = False
        self._error: UpstreamError | None = None
        self._buffered = 0
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:  # unsolicited bytes on an idle connection: it is unusable
            self._discard()
            return
        self._got_data = True
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadDone):
                # A HEAD answer has no body whatever its Content-Length says (RFC 9110 §9.3.2)
                # but llhttp cannot be told so: start a new parser for the next exchange.
                self._parser = HttpResponseParser(self)
                self._poisoned = not data.endswith(b"\r\n\r\n")
            elif isinstance(cause, _Unsolicited) and self._complete:
                self._poisoned = True  # the answer is whole; junk after it spoils the rest
            elif isinstance(cause, UpstreamError):
                self._fail(cause)
            else:
                self._fail(UpstreamProtocolError(self._stage(), f"callback failed: {cause!r}"))
        except HttpParserUpgrade:
            self._fail(UpstreamProtocolError("response", "upgrade responses are not supported"))
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(self._stage(), f"malformed response: {exc}"))
        exchange = self._exchange
        if exchange is not None:
            loop = self._pool._loop
            assert loop is not None
            self._deadline = loop.time() + exchange._timeout  # the silence starts again
            exchange.on_event(False)

    def eof_received(self) -> bool | None:
        self._on_closed()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete or not self._active:
            raise _Unsolicited

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx interim responses are skipped (RFC 9110 §15.2)
            if status == 101:
                raise UpstreamProtocolError("response", "101 Switching Protocols unexpected")
            self._interim = True
            return
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()
        self._head_done = True
        _wake(self._waiter)
        _wake(self._drain_waiter)  # an early answer ends a streamed upload
        if self._head_request:
            self._complete = True
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        _wake(self._waiter)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._headers = []
            self._reason = b""
            return
        self._complete = True
        _wake(self._waiter)

    # -- state ---------------------------------------------------------------------------

    def _stage(self) -> Stage:
        return "body" if self._head_done else "response"

    def _on_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._active:
            self._discard()
            return
        if not self._complete and self._error is None:
            if self._head_done and self._is_close_delimited():
                self._complete = True  # RFC 9112 §6.3 rule 8: the body ends at close
                self._keep_alive = False
            else:
                stage = self._stage()
                self._error = UpstreamClosed(stage, f"upstream closed the connection ({stage})")
        _wake(self._waiter)
        _wake(self._drain_waiter)
        if self._exchange is not None:
            self._exchange.on_event(False)

    def _is_close_delimited(self) -> bool:
        for name, _ in self._headers:
            if len(name) in (14, 17) and name.lower() in _OWNED:
                return False
        return True

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._poisoned = True
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        _wake(self._waiter)
        _wake(self._drain_waiter)
        if self._exchange is not None:
            self._exchange.on_event(False)

    def _unanswered_reuse(self) -> bool:
        """A reused connection that had not a byte of an answer: the upstream may have
        closed it as idle just as it was reused, so the request may be sent again."""
        return self._reused and not self._got_data

    def _discard(self) -> None:
        """Close the connection and stop counting it in the pool (idempotent)."""
        self._closed = True
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()
        if not self._forgotten:
            self._forgotten = True
            self._pool._forget(self)

    async def _wait(self, limit: float, stage: Stage) -> None:
        """Wait for the parser's next event, at most ``limit`` seconds.

        The timeout is a deadline checked by one timer per connection, not a timer per
        wait: a keep-alive connection waits twice or more per request, and a timer armed
        and cancelled each time (a libuv handle allocated, started, stopped and closed) was
        ~4 µs of every proxied request at one connection (bench/README.md). The timer is
        re-armed only when a wait needs it sooner than it is set for; when it fires early
        it moves itself to the current deadline, and with nothing waiting it lapses.
        """
        loop = self._pool._loop
        assert loop is not None
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        self._arm(loop.time() + limit)
        try:
            ok = await fut
        finally:
            self._waiter = None
        if not ok:
            raise _silence(limit, stage)

    def _on_timer(self) -> None:
        self._timer = None
        fut = self._waiter
        exchange = self._exchange
        if (exchange is None and (fut is None or fut.done())) or self._closed:
            return  # nothing waits: the next wait arms it again
        loop = self._pool._loop
        assert loop is not None
        # (libuv's timers count whole milliseconds: one may fire just before its deadline)
        if loop.time() + _TIMER_SLACK < self._deadline:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        elif exchange is not None:
            exchange.on_event(True)
        elif fut is not None:
            fut.set_result(False)

    def _arm(self, deadline: float) -> None:
        """Have the timer fire by ``deadline`` (moved only when it is set for later)."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            loop = self._pool._loop
            assert loop is not None
            self._timer = loop.call_at(deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait_head(self, limit: float) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(limit, "response")

    async def _drain(self, limit: float) -> None:
        loop = self._pool._loop
        assert loop is not None
        while self._write_paused and not self._closed and not self._head_done:
            fut: asyncio.Future[bool] = loop.create_future()
            self._drain_waiter = fut
            timer = loop.call_later(limit, _expire, fut)
            try:
                ok = await fut
            finally:
                timer.cancel()
                self._drain_waiter = None
            if not ok:
                raise UpstreamTimeout("request", f"upstream did not read for {limit:g}s")

    async def _send_stream(
        self, body: AsyncIterable[bytes], length: int | None, limit: float
    ) -> None:
        """Write a streamed body: raw when its length was declared, else chunked."""
        transport = self._transport
        assert transport is not None
        sent = 0
        async for chunk in body:
            if self._head_done:  # answered early (e.g. 413): stop; the rest cannot follow
                self._poisoned = True
                return
            if self._closed:
                raise self._error or UpstreamClosed("request", "upstream closed during upload")
            if not chunk:
                continue
            sent += len(chunk)
            if length is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > length:
                raise UpstreamProtocolError("request", f"body exceeds Content-Length {length}")
            else:
                transport.write(chunk)
            if self._write_paused:
                await self._drain(limit)
        if self._head_done or self._closed:
            self._poisoned = True
            return
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise UpstreamProtocolError("request", f"body of {sent} bytes, declared {length}")


class UpstreamResponse:
    """A response head, with the body streamed from the connection.

    Iterate it (or call :meth:`read`) for the body, then :meth:`aclose` it (or use
    ``async with``): the connection goes back to the pool when the whole body arrived and
    keep-alive is allowed, else it is closed. ``headers`` are raw, as received; the caller
    drops hop-by-hop ones.
    """

    __slots__ = ("_conn", "_timeout", "headers", "reason", "status")

    def __init__(self, conn: _Connection, timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self.status: int = conn._status
        self.reason: bytes = conn._reason
        self.headers: list[tuple[bytes, bytes]] = conn._headers

    def __aiter__(self) -> UpstreamResponse:
        return self

    def iter_body(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        chunks = conn._chunks
        try:
            while True:
                if chunks:
                    chunk = chunks.popleft()
                    conn._buffered -= len(chunk)
                    if conn._paused and conn._buffered <= _LOW_WATER:
                        conn._paused = False
                        if not conn._closed and conn._transport is not None:
                            conn._transport.resume_reading()
                    return chunk
                if conn._complete:
                    self._conn = None
                    conn._pool._finish(conn)
                    raise StopAsyncIteration
                if conn._error is not None:
                    raise conn._error
                await conn._wait(self._timeout, "body")
        except BaseException as exc:
            if not isinstance(exc, StopAsyncIteration):
                self._conn = None
                conn._discard()
            raise

    async def read(self) -> bytes:
        """The whole body (for small bodies; prefer iterating for large ones)."""
        conn = self._conn
        if conn is not None and conn._complete:  # fast path: it all came with the head
            body = b"".join(conn._chunks)
            conn._chunks.clear()
            self._conn = None
            conn._pool._finish(conn)
            return body
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Give the connection back (whole body received) or close it (idempotent)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn._chunks.clear()
            conn._pool._finish(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose(): close the socket so the pool slot is not lost for good.
        conn = self._conn
        if conn is not None:
            with suppress(Exception):  # the loop may be gone at interpreter exit
                conn._discard()


class UpstreamExchange:
    """A request without a body written by :meth:`UpstreamPool.start`, whose events (data,
    the end, an error, the read timeout) call :meth:`on_event` instead of waking a task.

    Subclass it and override :meth:`on_event`. Once :attr:`head_done` (or :meth:`error`),
    end the exchange with one of :meth:`finish` (the whole body arrived: the connection
    goes back to the pool), :meth:`abandon` (it is closed) or :meth:`response` (the rest is
    read as an :class:`UpstreamResponse`, by awaiting). After that no event comes.
    """

    __slots__ = ("_conn", "_timeout")

    def __init__(self) -> None:
        self._conn: _Connection | None = None
        self._timeout = 0.0

    def on_event(self, timed_out: bool) -> None:
        """Something happened; ``timed_out``: the read timeout passed without data."""
        raise NotImplementedError

    @property
    def head_done(self) -> bool:
        return self._conn is not None and self._conn._head_done

    @property
    def complete(self) -> bool:
        """The whole response arrived."""
        return self._conn is not None and self._conn._complete

    @property
    def status(self) -> int:
        assert self._conn is not None
        return self._conn._status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Raw, as received (see :class:`UpstreamResponse`)."""
        assert self._conn is not None
        return self._conn._headers

    def error(self, timed_out: bool) -> UpstreamError | None:
        """What went wrong, if anything did, as :meth:`UpstreamPool.request` would raise it."""
        conn = self._conn
        if conn is None:
            return None
        if conn._error is not None:
            return conn._error
        if timed_out:
            return _silence(self._timeout, conn._stage())
        return None

    def stale(self) -> bool:
        """The upstream closed a reused connection without answering a byte: the request
        may be sent again on a new connection (see the module doc)."""
        conn = self._conn
        return (
            conn is not None
            and conn._unanswered_reuse()
            and isinstance(conn._error, UpstreamClosed)
        )

    def body(self) -> bytes:
        """The body received so far (the whole of it once :attr:`complete`)."""
        assert self._conn is not None
        return b"".join(self._conn._chunks)

    def _detach(self) -> _Connection | None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn._exchange = None
        return conn

    def finish(self) -> None:
        """Give the connection back (whole body received) or close it."""
        conn = self._detach()
        if conn is not None:
            conn._chunks.clear()
            conn._pool._finish(conn)

    def abandon(self) -> None:
        """Close the connection (the client went away, or the answer is not wanted)."""
        conn = self._detach()
        if conn is not None:
            conn._discard()

    def response(self) -> UpstreamResponse:
        """The response so far, its body read by awaiting from now on."""
        conn = self._detach()
        assert conn is not None and conn._head_done
        return UpstreamResponse(conn, self._timeout)


class UpstreamPool:
    """Keep-alive connections to one ``http://host:port[/prefix]`` upstream.

    ``read_timeout`` bounds the wait for the response head and each silence between body
    chunks; ``pool_timeout`` (default: ``connect_timeout``) the wait for a free connection
    when ``max_connections`` are busy; idle connections older than ``idle_timeout`` are
    closed instead of reused (below Node's 5 s default ``keepAliveTimeout``, so that we
    rarely write into a connection the server is closing). Create it in the lifespan and
    ``await pool.aclose()`` at shutdown.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        pool_timeout: float | None = None,
        idle_timeout: float | None = 4.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(
                f"upstream {base_url!r}: only http:// upstreams are supported "
                "(terminate TLS in front of the upstream, or use another client)"
            )
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise ValueError(f"upstream {base_url!r}: expected http://host[:port][/prefix]")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._host = parts.hostname
        self._port = parts.port or 80
        if not parts.netloc.isascii():
            raise ValueError(f"upstream {base_url!r}: write the host name in ASCII (punycode)")
        self._host_header = parts.netloc.encode("ascii")
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_timeout = connect_timeout if pool_timeout is None else pool_timeout
        self._idle_timeout = idle_timeout
        self._max = max_connections
        self._count = 0
        self._idle: list[_Connection] = []  # LIFO: the warmest connection is reused first
        self._waiters: deque[asyncio.Future[_Connection | bool | None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this pool runs on (cached: ``get_running_loop()`` is a getpid())."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self,
        method: str,
        target: str | bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        ``target`` is the origin-form path and query (``/a/b?c=d``), appended to the base
        URL's prefix. ``body`` is bytes (sent with Content-Length) or an async iterable of
        bytes (streamed: raw when ``headers`` declare a Content-Length, else chunked).
        """
        if self._closed:
            raise RuntimeError("UpstreamPool is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        timeout = self._read_timeout if read_timeout is None else read_timeout
        data: bytes | bytearray | memoryview | None = None
        stream: AsyncIterable[bytes] | None = None
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            data = body
        else:
            stream = body
        head, length = self._encode_head(method, target, headers, data, stream is not None)
        retried = False
        conn = self._pop_idle() or await self._acquire(fresh=False)
        while True:
            try:
                conn._begin(method == "HEAD")
                conn._active = True
                transport = conn._transport
                assert transport is not None
                if stream is not None:
                    transport.write(head)
                    await conn._send_stream(stream, length, timeout)
                elif not data:
                    transport.write(head)
                elif len(data) > 16384:
                    transport.writelines((head, data))
                else:
                    transport.write(head + data)
                await conn._wait_head(timeout)
                return UpstreamResponse(conn, timeout)
            except UpstreamClosed:
                stale = conn._unanswered_reuse() and stream is None and not retried
                conn._discard()
                if not stale:
                    raise
                retried = True
                conn = await self._acquire(fresh=True)
            except BaseException:
                conn._discard()
                raise

    def start(
        self,
        method: str,
        target: str | bytes,
        headers: list[tuple[bytes, bytes]],
        exchange: UpstreamExchange,
        *,
        read_timeout: float | None = None,
    ) -> bool:
        """Write a request without a body on an idle keep-alive connection and have
        ``exchange`` called on its events, with no task awaiting them. ``False`` (nothing
        written) when no idle connection is at hand or the head is refused: the caller
        takes :meth:`request`'s way, which connects, waits, retries and raises.

        The read timeout is kept as :meth:`request` keeps it: for the head, then for each
        silence between body chunks.
        """
        if self._closed:
            return False
        try:
            head, _ = self._encode_head(method, target, headers, None, False)
        except ValueError:
            return False
        conn = self._pop_idle()
        if conn is None:
            return False
        loop = self._loop
        assert loop is not None and conn._transport is not None
        timeout = self._read_timeout if read_timeout is None else read_timeout
        conn._begin(method == "HEAD")
        conn._active = True
        exchange._conn, exchange._timeout = conn, timeout
        conn._exchange = exchange
        conn._arm(loop.time() + timeout)
        conn._transport.write(head)
        return True

    async def aclose(self) -> None:
        """Close idle connections now and busy ones when their response is done."""
        self._closed = True
        for conn in list(self._idle):
            conn._discard()
        self._wake_one(all_waiters=True)
        await asyncio.sleep(0)  # let the transports run connection_lost

    # -- request head --------------------------------------------------------------------

    def _encode_head(
        self,
        method: str,
        target: str | bytes,
        headers: list[tuple[bytes, bytes]],
        data: bytes | bytearray | memoryview | None,
        stream: bool,
    ) -> tuple[bytes, int | None]:
        method_b = _METHODS.get(method) or method.encode("ascii")
        if isinstance(target, str):
            target = target.encode("ascii")
        lines = [b"%s %s%s HTTP/1.1" % (method_b, self._prefix, target)]
        has_host = False
        length: int | None = None
        for name, value in headers:
            if len(name) in _OWNED_LENGTHS:
                lname = name.lower()
                if lname == b"host":
                    has_host = True
                elif lname == b"content-length":
                    if not value.isdigit():
                        raise ValueError(f"invalid Content-Length {value!r}")
                    length = int(value)
                    continue
                elif lname == b"transfer-encoding":
                    continue
            lines.append(name + b": " + value)
        if not has_host:
            lines.append(b"Host: " + self._host_header)
        if stream:
            if length is None:
                lines.append(b"Transfer-Encoding: chunked")
            else:
                lines.append(b"Content-Length: %d" % length)
        else:
            size = len(data) if data else 0
            if size or method_b not in _NO_BODY_METHODS:
                lines.append(b"Content-Length: %d" % size)
            length = None
        lines.append(b"\r\n")
        head = b"\r\n".join(lines)
        # One C-level scan instead of checking each header: a CR or LF inside the target,
        # a name or a value would split the head (header injection).
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
            raise ValueError("CR or LF in the request target or a header")
        return head, length

    # -- pool ----------------------------------------------------------------------------

    def _pop_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        limit = self._idle_timeout
        now = self._loop.time() if limit is not None and self._loop is not None else 0.0
        while idle:
            conn = idle.pop()
            conn._in_idle = False
            if conn._closed or (limit is not None and now - conn._idle_since > limit):
                conn._discard()
                continue
            return conn
        return None

    async def _acquire(self, fresh: bool) -> _Connection:
        loop = self._loop
        assert loop is not None
        front = False
        while True:
            if self._closed:
                raise RuntimeError("UpstreamPool is closed")
            if not fresh:
                conn = self._pop_idle()
                if conn is not None:
                    return conn
            if self._count < self._max:
                self._count += 1
                return await self._connect()
            if fresh and self._idle:
                self._idle[0]._discard()  # make room: the least recently used goes
                continue
            fut: asyncio.Future[_Connection | bool | None] = loop.create_future()
            if front:
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            timer = loop.call_later(self._pool_timeout, _expire, fut)
            try:
                got = await fut
                if self._closed:
                    if isinstance(got, _Connection):
                        got._discard()
                    raise RuntimeError("UpstreamPool is closed")
            except BaseException:
                if fut.done() and not fut.cancelled():
                    got = fut.result()  # handed over just as we were cancelled: pass it on
                    if isinstance(got, _Connection):
                        self._release(got)
                    else:
                        self._wake_one()
                elif fut in self._waiters:
                    self._waiters.remove(fut)
                raise
            finally:
                timer.cancel()
            if got is False:
                raise UpstreamTimeout(
                    "pool", f"no free connection within {self._pool_timeout:g}s "
                    f"(max_connections={self._max})"
                )  # fmt: skip
            if isinstance(got, _Connection):
                if not fresh and not got._closed:
                    return got
                got._discard()
            front = True  # a slot was freed for us: keep our place in the queue

    async def _connect(self) -> _Connection:
        loop = self._loop
        assert loop is not None
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: conn, self._host, self._port)
        except BaseException as exc:
            conn._discard()  # frees the slot
            where = f"{self._host}:{self._port}"
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    "connect", f"connect to {where} took over {self._connect_timeout:g}s"
                ) from None
            if isinstance(exc, OSError):
                raise UpstreamConnectError("connect", f"connect to {where}: {exc}") from exc
            raise
        return conn

    def _finish(self, conn: _Connection) -> None:
        """End of an exchange: reuse the connection if the response allows it."""
        conn._active = False
        if conn._complete and conn._keep_alive and not (conn._poisoned or conn._closed):
            conn._reused = True
            if conn._paused and conn._transport is not None:  # body left unread, yet whole
                conn._paused = False
                conn._transport.resume_reading()
            self._release(conn)
        else:
            conn._discard()

    def _release(self, conn: _Connection) -> None:
        if self._closed or conn._closed:
            conn._discard()
            return
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn._in_idle = True
        if self._idle_timeout is not None and self._loop is not None:
            conn._idle_since = self._loop.time()
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._count -= 1
        if conn._in_idle:
            conn._in_idle = False
            self._idle.remove(conn)
        self._wake_one()

    def _wake_one(self, all_waiters: bool = False) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not all_waiters:
                    return
