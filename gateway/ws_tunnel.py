"""A relayed WebSocket as two sockets spliced together, the way nginx proxies one.

The frame relay (:mod:`gateway.proxy_ws`) terminates the client's WebSocket in uvicorn's
websockets-sansio protocol, opens a second one to the legacy upstream with the
``websockets`` client and copies message by message between them: two protocol
engines, two tasks and their queues per connection. That cost 37 KiB of gateway memory
per idle connection and ~74 µs of CPU per message (bench/websocket.py); spliced, 4.3 KiB
and ~19 µs (--quick: 1 000 connections, 5 000 msg/s). A WebSocket proxy needs none of
it: once the upstream has answered the upgrade with 101, both sides speak the same
framing, masking and extensions end to end, and the gateway only has to move bytes. So here, for a legacy route to a plain ``http://`` upstream:

* the client's upgrade request is forwarded as is (its Sec-WebSocket-* headers, Host and
  end-to-end headers; X-Forwarded-*, X-Request-Id as for every proxied request), with
  reading from the client paused until the upstream answered;
* the upstream's answer goes back byte for byte: its 101 head (and so its subprotocol,
  its extensions and its own headers), or its refusal (a 404 with its body) after which
  both connections close; an upstream that cannot be reached, or does not answer with an
  HTTP head within its ``connect_timeout``, gets the client a 502 in the contract's shape;
* after 101, every read from one socket is written to the other (``transport.write``),
  with flow control: a side whose write buffer is full pauses reading on the other one,
  so a client that does not read stalls its upstream instead of filling the gateway.

What the gateway still tracks, without holding a byte back: where each direction's frames
begin and end (:class:`FrameScanner`: a 2–14-byte header, then the payload length is
skipped; a read inside a payload costs a subtraction), and the close frames each side sent
with their codes. That is what it needs to behave as the relay did where it matters:

* an upstream that drops the connection without a close frame gets the client a close
  frame 1011 (if its direction is between frames; else the client sees the drop), and a
  client that drops gets the upstream a masked close 1011 the same way;
* the gateway's drain (:meth:`WebSocketTunnel.going_away`, and uvicorn's ``shutdown()``
  of every connection) closes the client with 1001 and the upstream with 1000, each at
  the next frame boundary of its direction (a frame half sent is never cut; after 1 s
  without a boundary the sockets are simply closed);
* the gateway's bookkeeping: the open-WebSockets gauge, the drain's registry, one access
  log line with the upstream's status, and whether the client was sent an abnormal close
  (1006/1011) for the guard — through the callbacks of the :class:`Plan` the gateway
  made for the connection (``Gateway.websocket_tunnel``).

After the handshake a connection is three small objects with ``__slots__``
(:class:`WebSocketTunnel` and its two :class:`_Half` protocols, one per socket) and the
plan's two callbacks: no task, no buffer, no timer. The hook that hands a connection over
is ``GatewayHttpProtocol.handle_websocket_upgrade`` (gateway/http11.py); whatever it does
not hand over goes to uvicorn's WebSocket protocol and the ASGI app as before
(``Gateway._websocket``: unrouted paths, a draining gateway, module routes, and the frame
relay for ``https://`` upstreams and for the gateway under another server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

from .errors import JSON_CONTENT_TYPE, error_body

log = logging.getLogger("chatgw.ws")

# Request headers never forwarded on a tunnelled upgrade, beside the hop-by-hop ones and
# the gateway's own (Gateway._scan_headers): an upgrade request carries no body here.
DROP = frozenset({b"content-length"})

MAX_HEAD = 64 * 1024  # the most bytes of an upstream's answer head
DRAIN_GRACE = 1.0  # seconds a drain waits for a frame boundary before it just closes
DRAIN_REASON = b"gateway shutting down"

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: |\r)")


def close_frame(code: int, reason: bytes = b"", *, masked: bool = False) -> bytes:
    """A close frame (RFC 6455 §5.5.1); ``masked`` for the client-to-server direction."""
    payload = code.to_bytes(2, "big") + reason
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + key + body


_CLOSE_1011 = close_frame(1011)
_CLOSE_1001 = close_frame(1001, DRAIN_REASON)


class FrameScanner:
    """Where the frames of one direction begin and end, and its first close frame.

    It reads frame headers only (RFC 6455 §5.2: two bytes, an extended length of 2 or 8,
    a masking key of 4 when the mask bit is set), skips payloads by their length, and
    never keeps more than a header split across reads (at most 13 bytes). Of a close
    frame it notes its code, unmasked when the frame is masked (1005: no code).
    """

    __slots__ = ("_code", "_key", "close_code", "closed", "left", "part")

    def __init__(self) -> None:
        self.left = 0  # payload bytes of the current frame still to come
        self.part: bytes | None = None  # a frame header split across reads, so far
        self.closed = False  # a close frame has started
        self.close_code: int | None = None  # its code, once read
        self._code: bytes | None = None  # the close code's bytes so far, while reading it
        self._key: bytes | None = None  # the close frame's masking key

    @property
    def at_boundary(self) -> bool:
        """True between two frames (nothing of a frame read yet, nothing of one left)."""
        return self.left == 0 and self.part is None

    def feed(self, data: bytes) -> None:
        """Scan the next bytes of the direction."""
        left = self.left
        if left >= len(data) and self._code is None and self.part is None:
            self.left = left - len(data)  # inside a payload: nothing to look at
            return
        self._scan(data, False)

    def feed_to_boundary(self, data: bytes) -> int:
        """Scan ``data`` up to the first frame boundary in it: its offset (0 when already
        at one; the rest is not scanned), or -1 when there is none."""
        return self._scan(data, True)

    def _scan(self, data: bytes, stop: bool) -> int:
        n = len(data)
        i = 0
        left = self.left
        while True:
            if left:
                take = n - i
                if take > left:
                    take = left
                if self._code is not None:
                    self._close_bytes(data[i : i + take])
                i += take
                left -= take
                if left:
                    break  # the data ended inside the payload
                if self._code is not None:  # a one-byte close payload: not a valid code
                    self._code = None
                    self.close_code = 1002
            if stop and self.part is None:
                self.left = 0
                return i
            if i >= n:
                break
            part = self.part
            if part is None:
                head = data[i : i + 14]
                have = 0
            else:
                have = len(part)
                head = part + data[i : i + 14 - have]
            if len(head) < 2:
                self.part = head
                i = n
                break
            b1 = head[1]
            length = b1 & 0x7F
            size = 2 + (4 if b1 & 0x80 else 0)
            if length == 126:
                size += 2
            elif length == 127:
                size += 8
            if len(head) < size:
                self.part = head  # (all of the data's rest is in it)
                i = n
                break
            i += size - have
            self.part = None
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            if head[0] & 0x0F == 8 and not self.closed:
                self.closed = True
                if length == 0:
                    self.close_code = 1005
                else:
                    self._code = b""
                    self._key = head[size - 4 : size] if b1 & 0x80 else None
            left = length
        self.left = left
        return -1

    def _close_bytes(self, chunk: bytes) -> None:
        code = self._code
        assert code is not None
        code += chunk[: 2 - len(code)]
        if len(code) < 2:
            self._code = code
            return
        key = self._key
        if key is not None:
            code = bytes((code[0] ^ key[0], code[1] ^ key[1]))
        self.close_code = int.from_bytes(code, "big")
        self._code = self._key = None


class Plan:
    """What the gateway decided for one upgrade: where to connect, the request head to
    send, and its bookkeeping callbacks: ``opened(tunnel)`` once the tunnel starts,
    ``closed(tunnel, status, client_code)`` once both sockets are closed — ``status``
    the upstream's (101, its refusal) or the gateway's (502; 499 when the client left
    before the upstream answered), ``client_code`` the close code the client was sent
    when the other side closed first (the upstream's, 1011 for a drop, 1006 for a drop
    mid-frame, 1001 for the drain), None when the client closed first."""

    __slots__ = ("closed", "connect_timeout", "head", "host", "opened", "port")

    def __init__(
        self,
        host: str,
        port: int,
        head: bytes,
        connect_timeout: float,
        opened: Callable[[WebSocketTunnel], None] | None = None,
        closed: Callable[[WebSocketTunnel, int, int | None], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.head = head
        self.connect_timeout = connect_timeout
        self.opened = opened
        self.closed = closed


def make_plan(
    upstream_url: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    rid: bytes,
    connect_timeout: float,
) -> Plan | None:
    """The plan for an upstream at ``upstream_url`` (None unless it is plain
    ``http://``): ``GET <its base path><target> HTTP/1.1``, ``headers`` (the forwarded
    ones), then ``connection: Upgrade``, ``upgrade: websocket`` and ``x-request-id``."""
    parts = urlsplit(upstream_url)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.username:
        return None
    try:
        port = parts.port or 80
    except ValueError:
        return None
    out = [b"GET ", parts.path.encode("latin-1"), target, b" HTTP/1.1\r\n"]
    if not any(k == b"host" for k, _ in headers):
        out += [b"host: ", parts.netloc.encode("latin-1"), b"\r\n"]
    for k, v in headers:
        out += [k, b": ", v, b"\r\n"]
    out += [b"connection: Upgrade\r\nupgrade: websocket\r\nx-request-id: ", rid, b"\r\n\r\n"]
    return Plan(parts.hostname, port, b"".join(out), connect_timeout)


def log_path(raw_path: bytes) -> str:
    """The path as the access log shows it (percent-decoded, as uvicorn's scope has it)."""
    path = raw_path.decode("latin-1")
    return unquote(path) if "%" in path else path


# WebSocketTunnel.state, in the order they come
CONNECTING, HANDSHAKE, PASSING, RELAYING, FAILED, DONE = range(6)
# WebSocketTunnel.gone: which sockets are closed (or, upstream, never opened)
_CLIENT, _UPSTREAM = 1, 2


class _Half(FrameScanner, asyncio.Protocol):
    """One direction of a tunnel: the protocol of the socket it reads (``src``), writing
    what it reads to the other socket (``dst``), and the scanner of its frames."""

    __slots__ = ("cut", "dst", "src", "tunnel")

    def __init__(self, tunnel: WebSocketTunnel) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.src: Any = None  # asyncio.Transport
        self.dst: Any = None
        # None: relaying; a close frame: to write at the next frame boundary, then stop;
        # b"": stopped (the drain: nothing more goes this way)
        self.cut: bytes | None = None

    def connection_made(self, transport: Any) -> None:  # the upstream's socket
        self.src = transport
        self.tunnel.client_half.dst = transport

    def data_received(self, data: bytes) -> None:
        if self.cut is None and self.tunnel.state == RELAYING:
            self.feed(data)
            if self.closed:
                self.tunnel.noted_close(self)
            try:
                self.dst.write(data)
            except RuntimeError:  # (uvloop) its socket is closed already: ours closes next
                pass
        else:
            self.tunnel.other_data(self, data)

    def eof_received(self) -> bool | None:
        return None  # close this socket; connection_lost says what becomes of the other

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.lost(self)

    def pause_writing(self) -> None:
        # this socket's write buffer is full: stop reading the socket that fills it
        dst = self.dst
        if dst is not None and not dst.is_closing():
            dst.pause_reading()

    def resume_writing(self) -> None:
        dst = self.dst
        tunnel = self.tunnel
        # (the client's reading stays paused until the upstream's 101)
        relaying = tunnel.state == RELAYING or self is tunnel.client_half
        if relaying and dst is not None and not dst.is_closing():
            dst.resume_reading()

    def write_cut(self, data: bytes) -> None:
        """Relay ``data`` up to the next frame boundary, then the pending close frame."""
        cut = self.cut
        assert cut
        at = self._scan(data, True)
        if at < 0:
            self.dst.write(data)
            return
        if at:
            self.dst.write(data[:at])
        self.dst.write(cut)
        self.cut = b""
        self.tunnel.cut_done()


class WebSocketTunnel:
    """One tunnelled WebSocket (see the module doc). The client's socket must read into
    :attr:`client_half` (``transport.set_protocol``) before :meth:`start`."""

    __slots__ = (
        "_timer", "client_code", "client_half", "connections", "draining", "early", "first",
        "gone", "head", "loop", "parser", "plan", "state", "status", "task", "up_half",
    )  # fmt: skip

    def __init__(
        self,
        plan: Plan,
        client: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        connections: set[Any] | None = None,
    ) -> None:
        self.plan: Plan | None = plan  # None once closed and counted
        self.loop = loop
        self.connections = connections  # uvicorn's server_state.connections
        self.client_half = _Half(self)
        self.client_half.src = client
        self.up_half = _Half(self)
        self.up_half.dst = client
        self.state = CONNECTING
        self.gone = 0
        self.status = 0
        self.first: _Half | None = None  # the direction whose close frame came first
        self.client_code: int | None = None  # set when the gateway closed the client
        self.draining = False  # asked before the upstream's 101: drain right after it
        self.task: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.head: bytes | None = None  # the upstream's answer so far, until its head ends
        self.parser: Any = None  # httptools, over a refusal's body
        self.early = b""  # client bytes read before the upstream's 101 (none expected)

    # ------------------------------------------------------------ handshake

    def start(self) -> None:
        plan = self.plan
        assert plan is not None
        self.client_half.src.pause_reading()
        if self.connections is not None:
            self.connections.add(self)
        if plan.opened is not None:
            plan.opened(self)
        loop = self.loop
        self._timer = loop.call_later(plan.connect_timeout, self._timed_out)
        up_half = self.up_half
        task = loop.create_task(loop.create_connection(lambda: up_half, plan.host, plan.port))
        task.add_done_callback(self._connected)
        self.task = task

    def _connected(self, task: asyncio.Future[Any]) -> None:
        self.task = None
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None:
            if exc is not None:
                log.warning("websocket upstream unreachable: %s", type(exc).__name__)
                self._fail()
            self._gone(_UPSTREAM)
            return
        up = self.up_half.src
        if self.state != CONNECTING:  # timed out, or the client left, meanwhile
            up.abort()
            return
        try:
            up.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.state = HANDSHAKE
        plan = self.plan
        assert plan is not None
        up.write(plan.head)
        plan.head = b""  # (not kept for the connection's life)

    def _timed_out(self) -> None:
        self._timer = None
        if self.state == CONNECTING:
            log.warning("websocket upstream unreachable: connect timeout")
            if self.task is not None:
                self.task.cancel()
            self._fail()
        elif self.state == HANDSHAKE:
            log.warning("websocket upstream did not answer the upgrade in its connect timeout")
            self._fail()

    def _fail(self) -> None:
        """No answer from the upstream: the client gets a 502, and both sockets close."""
        if self.state >= FAILED:
            return
        self.state = FAILED
        self.status = 502
        self.head = None
        up = self.up_half.src
        if up is not None and not up.is_closing():
            up.abort()
        client = self.client_half.src
        if not client.is_closing():
            body = error_body(502, "the upstream refused the connection")
            client.write(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: " + JSON_CONTENT_TYPE
                + b"\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n" + body
            )  # fmt: skip
            client.close()

    def other_data(self, half: _Half, data: bytes) -> None:
        """Bytes outside plain relaying: the upstream's answer, a drain's cut, leftovers."""
        state = self.state
        if state == RELAYING:
            if half.cut:
                half.write_cut(data)
            # else: the drain stopped this direction
        elif half is self.up_half:
            if state == HANDSHAKE:
                self._answer(data)
            elif state == PASSING:
                self._pass(data)
        elif state < RELAYING:
            # A client does not send before the upstream's 101 (RFC 6455 §4.1), and its
            # reading is paused meanwhile; should bytes come anyway, they wait for it.
            self.early += data
            half.src.pause_reading()

    def _answer(self, data: bytes) -> None:
        head = self.head + data if self.head else data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD:
                log.warning("websocket upstream's answer head is too long")
                self._fail()
            else:
                self.head = head
            return
        m = _STATUS_LINE.match(head)
        if m is None:
            log.warning("websocket upstream answered the upgrade with no HTTP head")
            self._fail()
            return
        self.head = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.status = int(m.group(1))
        if self.status != 101:
            self.state = PASSING
            self.parser = httptools.HttpResponseParser(self)
            self._pass(head)
            return
        end += 4
        client = self.client_half.src
        client.write(head[:end])
        self.state = RELAYING
        if len(head) > end:
            self.up_half.data_received(head[end:])
        early, self.early = self.early, b""
        if early:
            self.client_half.data_received(early)
        if self.draining:
            self._drain()
        elif self.state == RELAYING and not client.is_closing():
            client.resume_reading()

    def _pass(self, data: bytes) -> None:
        """A refusal (any answer but 101): byte for byte to the client, then both close."""
        client = self.client_half.src
        if not client.is_closing():
            client.write(data)
        parser = self.parser
        if parser is not None:
            try:
                parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self.parser = None  # then it ends when the upstream closes
        if self.state == DONE:  # (on_message_complete)
            self.parser = None
            client.close()
            up = self.up_half.src
            if not up.is_closing():
                up.close()

    def on_message_complete(self) -> None:  # httptools: the end of a refusal's body
        self.state = DONE

    # ------------------------------------------------------------ relaying, closing

    def noted_close(self, half: _Half) -> None:
        if self.first is None:
            self.first = half

    def lost(self, half: _Half) -> None:
        """One socket closed: close the other, first sending the close frame the relay
        would have sent when the side that went away did not send its own."""
        state = self.state
        other = half.dst
        if half is self.up_half:
            self.gone |= _UPSTREAM
            if state == HANDSHAKE:
                log.warning("websocket upstream closed the connection before it answered")
                self._fail()
            elif state == RELAYING and not other.is_closing():
                if self.first is None:  # dropped without a close frame
                    self.first = half
                    if half.at_boundary:
                        other.write(_CLOSE_1011)  # (what the relay sent for a 1006)
                        self.client_code = 1011
                    else:
                        self.client_code = 1006
                other.close()
            elif state == PASSING:
                self.state = DONE
                other.close()
        else:
            self.gone |= _CLIENT
            if state < RELAYING:
                self.status = self.status or 499
                self.state = FAILED
                if self.task is not None:
                    self.task.cancel()
                elif other is not None:
                    other.abort()
            elif other is not None and not other.is_closing():
                if self.first is None and state == RELAYING and half.at_boundary:
                    other.write(close_frame(1011, masked=True))
                other.close()
        if self.gone == _CLIENT | _UPSTREAM:
            self._finish()

    def _gone(self, side: int) -> None:
        self.gone |= side
        if self.gone == _CLIENT | _UPSTREAM:
            self._finish()

    def _finish(self) -> None:
        plan = self.plan
        if plan is None:
            return
        self.plan = None
        self.state = DONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.connections is not None:
            self.connections.discard(self)
        code = self.client_code
        first = self.first
        if code is None and first is self.up_half:
            code = first.close_code if first.close_code is not None else 1005
        if plan.closed is not None:
            plan.closed(self, self.status, code)

    # ------------------------------------------------------------ drain

    async def going_away(self) -> None:
        """The gateway drains: 1001 to the client, 1000 to the upstream (module doc)."""
        self._drain()

    def shutdown(self) -> None:
        """uvicorn's call to every connection when it stops: as :meth:`going_away`."""
        self._drain()

    def _drain(self) -> None:
        state = self.state
        if state < RELAYING:
            self.draining = True  # done once the upstream's 101 went to the client
            return
        down, up = self.up_half, self.client_half  # upstream→client, client→upstream
        if state != RELAYING or down.cut is not None or up.cut is not None:
            return  # closing already, or drained already
        if self.first is None:
            self.first = down
            self.client_code = 1001
        for half, frame in (
            (down, _CLOSE_1001),
            (up, close_frame(1000, DRAIN_REASON, masked=True)),
        ):
            dst = half.dst
            if half.closed or dst is None or dst.is_closing():
                half.cut = b""  # its close frame went already (or its socket did)
            elif half.at_boundary:
                dst.write(frame)
                half.cut = b""
            else:
                half.cut = frame
        if not self.cut_done():
            self._timer = self.loop.call_later(DRAIN_GRACE, self._close_both)

    def cut_done(self) -> bool:
        """Once both directions of a drain sent their close frame, close both sockets."""
        if self.client_half.cut or self.up_half.cut:
            return False
        self._close_both()
        return True

    def _close_both(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for half in (self.client_half, self.up_half):
            src = half.src
            if src is not None and not src.is_closing():
                src.close()
