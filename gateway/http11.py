"""uvicorn's httptools protocol, writing a response's head and first body chunk at once.

uvicorn writes ``http.response.start`` and the first ``http.response.body`` with two
``transport.write()`` calls: two ``send()`` syscalls and two TCP segments for every small
response. On the gateway's hot path those writes were the largest single cost in the
profile (bench/README.md). Here the head is held back until the first body message of the
same event-loop step and both go out in one write; if no body follows in that step (a
server-sent-event stream that waits for its first event) the head is flushed on the next
loop turn, so a client never waits for headers longer than before.

It also offers the gateway a cheaper way to do what it otherwise wraps every module's
``send`` for (status and size for the log, X-Request-Id and X-Gateway-Backend on the
answer): a :class:`ResponseNotes` under ``scope["extensions"]["chatgw.response"]`` takes
headers to add to the response head and records the status and body bytes sent. The
wrapper (a closure per request, a call and a copy per message) was ~4 µs of the ~12 µs
the gateway added to an in-process call (bench/README.md). Under another server the
extension is absent and the gateway wraps ``send`` as before.

And it keeps the keep-alive timeout without a timer per response (:class:`_IdleSweeper`):
an idle connection is closed between ``timeout_keep_alive`` and 1.25 × of it (at most 1 s
later) after its last response.

It hands a WebSocket upgrade for a legacy route to :mod:`gateway.ws_tunnel`, which splices
the client's socket to the upstream's once the upstream answered 101, instead of uvicorn's
WebSocket protocol feeding the gateway's frame relay (bench/websocket.py --quick: 37 → 4.3
KiB per idle connection, 74 → 19 µs of gateway CPU per message). The app decides
(``Gateway.websocket_tunnel``): whatever it declines goes to uvicorn's protocol as before.

Nothing else about the protocol changes: parsing, keep-alive, pipelining, flow control,
the other WebSocket upgrades and the error paths are uvicorn's. The subclass leans on two
names of uvicorn's ``RequestResponseCycle`` (``transport``, ``send``), so pyproject.toml pins
uvicorn's minor version and ``tests/gateway/test_http11.py`` checks the behaviour on real
sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from .busypoll import BusyPoll
from .ws_tunnel import WebSocketTunnel


class _HeadFlusher:
    """Writes out held heads whose body did not follow in the same step, on the next loop
    turn: one callback per turn for all of them, not one per response."""

    __slots__ = ("armed", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[_HeadHolder] = []
        self.armed = False

    def add(self, holder: _HeadHolder) -> None:
        self.pending.append(holder)
        if not self.armed:
            self.armed = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.armed = False
        pending, self.pending = self.pending, []
        for holder in pending:
            holder.flush()  # (a no-op when its body came and took the head along)


class _HeadHolder:
    """A transport that can hold one write (the response head) for the next one."""

    __slots__ = ("_flusher", "_head", "_real")

    def __init__(self, real: asyncio.Transport, flusher: _HeadFlusher) -> None:
        self._real = real
        self._flusher = flusher
        self._head: bytes | None = None

    def hold(self, head: bytes) -> None:
        """Keep ``head`` for the next write (or the flusher's next turn)."""
        self._head = head
        self._flusher.add(self)

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._real.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._real.is_closing():
                self._real.write(head)

    def close(self) -> None:
        self.flush()
        self._real.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self._real, name)


RESPONSE_NOTES = "chatgw.response"


class ResponseNotes:
    """Header lines the app wants on its response head, and what the server sent of it."""

    __slots__ = ("body_bytes", "extra_head", "status")

    def __init__(self) -> None:
        # rendered ``name: value\r\n`` lines, written as they are: the app vouches for them
        self.extra_head = b""
        self.status = 0  # 0 until the response started
        self.body_bytes = 0


# Header names and values uvicorn's checks passed before (the same few recur on every
# response: content-type, content-length, their usual values): a set lookup instead of two
# regular-expression searches per header. Bounded, so varied values cannot grow them.
_NAMES: dict[bytes, bytes] = {}  # valid name -> lower-cased
_VALUES: set[bytes] = set()
_KNOWN_MAX = 1024
_defaults: tuple[object, bytes] = (None, b"")  # (server_state.default_headers, rendered)


def _default_head(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The server's own headers (Date, Server), rendered once per list: uvicorn builds a
    new list when the Date changes, once a second."""
    global _defaults
    if _defaults[0] is not default_headers:
        lines = b"".join([k + b": " + v + b"\r\n" for k, v in default_headers])
        _defaults = (default_headers, lines)
    return _defaults[1]


class CoalescingCycle(RequestResponseCycle):
    """A request/response cycle whose response head rides with the first body chunk.

    The head and a Content-Length body are written here, as uvicorn's ``send`` writes them
    (the same checks, errors and keep-alive rules; ``tests/gateway/test_http11.py``);
    anything else (chunked, HEAD, a paused transport, misuse) goes to uvicorn's ``send``.
    """

    transport: Any
    notes: ResponseNotes

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body", b"")
            self.notes.body_bytes += len(body)
            if (
                self.chunked_encoding is False
                and self.response_started
                and not self.response_complete
                and not self.disconnected
                and not self.flow.write_paused
                and self.scope["method"] != "HEAD"
            ):
                self._body(body, message.get("more_body", False))
                return
        elif kind == "http.response.start" and not self.response_started:
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            self._head(message)
            return
        await super().send(message)

    # Served without a task (gateway.proxy_http.DirectForward): called if the client goes
    # away before the response started.
    lost: Any = None

    def can_respond(self) -> bool:
        """:meth:`respond_now` would write the response (nothing of it went out yet, and the
        client is there and reading)."""
        return (
            not self.response_started
            and not self.disconnected
            and not self.flow.write_paused
            and self.scope["method"] != "HEAD"
        )

    def _whole(self, head: bytes, body: bytes) -> None:
        self.notes.body_bytes += len(body)
        self.expected_content_length = 0
        self.transport.write(head + body)
        self._complete()

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """:meth:`respond` without awaiting, for ``headers`` that carry a Content-Length of
        ``len(body)``: ``True`` when the response went out (one write), ``False`` when
        nothing was done (a paused transport, HEAD...: await :meth:`respond` instead)."""
        if not self.can_respond():
            return False
        head = self._render_head(status, headers)
        if self.chunked_encoding is not False or len(body) != self.expected_content_length:
            raise RuntimeError("Response content does not match its Content-Length")
        self._whole(head, body)
        return True

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response: what ``send`` does for a start and a last body message, in one
        call and, with a Content-Length that matches the body, one write, without the held
        head's flush callback. Anything else takes ``send``'s way, errors included."""
        if self.can_respond():
            head = self._render_head(status, headers)
            if self.chunked_encoding is False and len(body) == self.expected_content_length:
                self._whole(head, body)
                return
            self.transport.hold(head)
        else:
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _head(self, message: Any) -> None:
        self.transport.hold(self._render_head(message["status"], message.get("headers", ())))

    def _render_head(self, status: int, headers: Any) -> bytes:
        # uvicorn's RequestResponseCycle.send for http.response.start, with known-good
        # headers looked up instead of searched
        self.response_started = True
        self.waiting_for_100_continue = False
        self.notes.status = status
        content = [STATUS_LINE[status], _default_head(self.default_headers)]
        has_connection_close = False
        for name, value in headers:
            lower = _NAMES.get(name)
            if lower is None:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                lower = name.lower()
                if len(_NAMES) < _KNOWN_MAX:
                    _NAMES[name] = lower
            if value not in _VALUES:
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                if len(_VALUES) < _KNOWN_MAX:
                    _VALUES.add(value)
            if lower == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif lower == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif lower == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content += (lower, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(self.notes.extra_head)
        content.append(b"\r\n")
        return b"".join(content)

    def _body(self, body: bytes, more_body: bool) -> None:
        # uvicorn's RequestResponseCycle.send for a Content-Length body
        num_bytes = len(body)
        if num_bytes > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= num_bytes
        self.transport.write(body)
        if not more_body:
            self._complete()

    def _complete(self) -> None:
        if self.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class _IdleSweeper:
    """Closes keep-alive connections idle past their timeout, with one timer per server
    every ``interval`` s. uvicorn arms a timer (a libuv handle, allocated, started, stopped
    and closed) after every response and cancels it on the next request; that pair was
    ~13 % of the in-process path's samples (bench/README.md). Here a response only stamps
    the connection idle, and the next request's bytes clear the stamp."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.idle: set[GatewayHttpProtocol] = set()
        self.armed = False

    def add(self, proto: GatewayHttpProtocol) -> None:
        self.idle.add(proto)
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self.armed = False
        now = self.loop.time()
        for proto in list(self.idle):
            since = proto.idle_since
            if since is None:  # busy again (or gone): re-added after its next response
                self.idle.discard(proto)
            elif now - since >= proto.timeout_keep_alive:
                self.idle.discard(proto)
                proto.timeout_keep_alive_handler()
        if self.idle:
            self.armed = True
            self.loop.call_later(self.interval, self._sweep)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``http="httptools"`` protocol with :class:`CoalescingCycle` cycles and
    the keep-alive timeout kept by an :class:`_IdleSweeper`."""

    idle_since: float | None = None  # loop time of the last response, None while busy
    _holder: _HeadHolder | None = None
    _idle_sweeper: _IdleSweeper | None = None
    _http_entry: Any = None
    _http_start: Any = None  # the app's http_start, False: none

    _busy_poll: BusyPoll | None = None  # the server's, when busy polling is on
    _counted = False  # this connection's request is in its BusyPoll's in_flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        window: float = getattr(self.config, "chatgw_busy_poll", 0.0)  # uvicorn_config's
        if window:
            self._busy_poll = self._server_busy_poll(window)

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        poll = self._busy_poll
        if poll is not None and not poll.in_flight:
            poll.poke()
        super().data_received(data)

    def _server_busy_poll(self, window: float) -> BusyPoll:
        """The server's :class:`gateway.busypoll.BusyPoll`, one per server and loop."""
        state: Any = self.server_state
        poll: BusyPoll | None = getattr(state, "chatgw_busy_poll", None)
        if poll is None or poll.loop is not self.loop:
            poll = state.chatgw_busy_poll = BusyPoll(self.loop, window)
        return poll

    def _request_done(self) -> None:
        self._counted = False
        assert self._busy_poll is not None
        self._busy_poll.in_flight -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle_since = None
        if self._counted:
            self._request_done()
        cycle = self.cycle
        super().connection_lost(exc)
        lost = getattr(cycle, "lost", None)
        if lost is not None:  # a request served without a task (see _start_asgi_task)
            cast(CoalescingCycle, cycle).lost = None
            lost()

    def handle_websocket_upgrade(self) -> None:
        # A relayed WebSocket becomes a tunnel (gateway.ws_tunnel) when the app has a plan
        # for it; anything else (and a request that is not a plain GET upgrade with
        # nothing before it on the connection) takes uvicorn's way.
        plan_for = getattr(self.app, "websocket_tunnel", None)
        scope = self.scope
        if (
            plan_for is not None
            and scope["method"] == "GET"
            and scope["http_version"] == "1.1"
            and not self.pipeline
            and (self.cycle is None or self.cycle.response_complete)
        ):
            try:
                plan = plan_for(self.url, scope["headers"], self.client, self.scheme)
            except Exception:
                self.logger.exception("websocket_tunnel failed; the ASGI app takes the upgrade")
                plan = None
            if plan is not None:
                self.connections.discard(self)
                tunnel = WebSocketTunnel(plan, self.transport, self.loop, self.connections)
                self.transport.set_protocol(tunnel.client_half)
                tunnel.start()
                # This protocol is done: without its parser (which points back at it) it
                # is freed now, not at the next full garbage collection.
                self.parser = None  # type: ignore[assignment]
                self.cycle = None  # type: ignore[assignment]
                return
        super().handle_websocket_upgrade()

    def on_response_complete(self) -> None:
        # uvicorn's, except for the keep-alive timer (see _IdleSweeper)
        self.server_state.total_requests += 1
        if self._counted:
            self._request_done()
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_since = self.loop.time()
            sweeper = self._idle_sweeper
            if sweeper is None:
                sweeper = self._idle_sweeper = self._sweeper()
            sweeper.add(self)

    def _flusher(self) -> _HeadFlusher:
        state: Any = self.server_state
        flusher: _HeadFlusher | None = getattr(state, "chatgw_head_flusher", None)
        if flusher is None or flusher.loop is not self.loop:
            flusher = state.chatgw_head_flusher = _HeadFlusher(self.loop)
        return flusher

    def _sweeper(self) -> _IdleSweeper:
        state: Any = self.server_state
        sweeper: _IdleSweeper | None = getattr(state, "chatgw_idle_sweeper", None)
        if sweeper is None or sweeper.loop is not self.loop:
            interval = min(1.0, max(0.05, self.timeout_keep_alive / 4))
            sweeper = state.chatgw_idle_sweeper = _IdleSweeper(self.loop, interval)
        return sweeper

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        poll = self._busy_poll
        if poll is not None and not self._counted:
            self._counted = True
            poll.in_flight += 1
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = CoalescingCycle
            notes = cast(CoalescingCycle, cycle).notes = ResponseNotes()
            scope = cast(dict[str, Any], cycle.scope)
            extensions = scope.get("extensions")
            if extensions is None:
                scope["extensions"] = {RESPONSE_NOTES: notes}
            else:
                extensions[RESPONSE_NOTES] = notes
            # one holder per connection: its responses go out one after the other
            holder = self._holder
            if holder is None or holder._real is not cycle.transport:
                holder = self._holder = _HeadHolder(cycle.transport, self._flusher())
            cycle.transport = cast(asyncio.Transport, holder)
            if app is self.app:  # (not uvicorn's 503 app when over its concurrency limit)
                start = self._http_start
                if start is None:
                    start = self._find_http_start()
                if start:
                    app = start(cycle, self._spawn)
                    if app is None:
                        return  # served without a task: see Gateway.http_start
                else:
                    app = self._http_entry or self._find_http_entry()
        self._spawn(cycle, app)

    def _spawn(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Run ``app`` for ``cycle`` in a task (also for a request begun without one)."""
        super()._start_asgi_task(cycle, app)

    def _find_http_start(self) -> Any:
        """The app's ``http_start(cycle, spawn)`` when it has one (``Gateway.http_start``):
        it sees each request before a task exists, and either serves it without one
        (returning ``None``; ``spawn(cycle, app)`` runs an ASGI app for it later if need
        be) or returns the ASGI app to run in the task."""
        start = self._http_start = getattr(self.app, "http_start", None) or False
        return start

    def _find_http_entry(self) -> Any:
        """The app's HTTP entry when it offers one (``Gateway.asgi_http``): the scope type is
        known here, so the app's ``__call__`` dispatching on it is a coroutine layer for
        nothing on every request."""
        entry = self._http_entry = getattr(self.app, "asgi_http", None) or self.app
        return entry
