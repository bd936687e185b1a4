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


class _HeadHolder:
    """A transport that can hold one write (the response head) for the next one."""

    __slots__ = ("_head", "_hold_next", "_loop", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._loop = loop
        self._head: bytes | None = None
        self._hold_next = False

    def write(self, data: bytes) -> None:
        if self._hold_next:
            self._hold_next = False
            self._head = data
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self._real.write(data)

    def hold_next_write(self) -> None:
        self._hold_next = True

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
            if notes.extra_headers:  # uvicorn writes default_headers first (Date)
                self.default_headers = self.default_headers + notes.extra_headers
            holder = self.transport
            holder.hold_next_write()
            try:
                await super().send(message)
            finally:
                holder._hold_next = False
            if holder._head is not None:  # (the protocol's loop: get_running_loop() is a getpid())
                holder._loop.call_soon(holder.flush)
            return
        await super().send(message)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``http="httptools"`` protocol with :class:`CoalescingCycle` cycles."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = CoalescingCycle
            notes = cast(CoalescingCycle, cycle).notes = ResponseNotes()
            scope = cast(dict[str, Any], cycle.scope)
            scope["extensions"] = {**scope.get("extensions", {}), RESPONSE_NOTES: notes}
            cycle.transport = cast(asyncio.Transport, _HeadHolder(cycle.transport, self.loop))
        super()._start_asgi_task(cycle, app)
