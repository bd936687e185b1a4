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

Nothing else about the protocol changes: parsing, keep-alive, pipelining, flow control,
WebSocket upgrades and the error paths are uvicorn's. The subclass leans on two names of
uvicorn's ``RequestResponseCycle`` (``transport``, ``send``), so pyproject.toml pins
uvicorn's minor version and ``tests/gateway/test_http11.py`` checks the behaviour on real
sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


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

    __slots__ = ("_extra", "_flusher", "_head", "_hold_next", "_real")

    def __init__(self, real: asyncio.Transport, flusher: _HeadFlusher) -> None:
        self._real = real
        self._flusher = flusher
        self._head: bytes | None = None
        self._hold_next = False
        self._extra = b""

    def write(self, data: bytes) -> None:
        if self._hold_next:
            self._hold_next = False
            extra = self._extra
            # uvicorn's head ends with the blank line: extra header lines go before it
            self._head = data[:-2] + extra + b"\r\n" if extra else data
            self._flusher.add(self)
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._real.write(data)

    def hold_next_write(self, extra: bytes) -> None:
        self._hold_next = True
        self._extra = extra

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
    """Headers the app wants on its response head, and what the server sent of it."""

    __slots__ = ("body_bytes", "extra_headers", "status")

    def __init__(self) -> None:
        self.extra_headers: list[tuple[bytes, bytes]] | None = None
        self.status = 0  # 0 until the response started
        self.body_bytes = 0


class CoalescingCycle(RequestResponseCycle):
    """A request/response cycle whose response head rides with the first body chunk."""

    transport: Any
    notes: ResponseNotes

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self.notes.body_bytes += len(message.get("body", b""))
        elif kind == "http.response.start" and not self.response_started and not self.disconnected:
            notes = self.notes
            notes.status = message["status"]
            extra = notes.extra_headers
            holder = self.transport
            # The gateway's own headers (a request id it validated, its backend name) are
            # written as they are; the app's go through uvicorn's checks.
            holder.hold_next_write(
                b"".join([k + b": " + v + b"\r\n" for k, v in extra]) if extra else b""
            )
            try:
                await super().send(message)
            finally:
                holder._hold_next = False
            return
        await super().send(message)


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

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle_since = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # uvicorn's, except for the keep-alive timer (see _IdleSweeper)
        self.server_state.total_requests += 1
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
        super()._start_asgi_task(cycle, app)
