"""gateway.ws_tunnel: a relayed WebSocket spliced byte for byte once the upstream said 101.

Three layers:

* the frame scanner as a unit (headers split at every byte, masked or not, 7/16/64-bit
  lengths, close codes), with a hypothesis property over random frames and random reads;
* ``Gateway.websocket_tunnel`` in process: what it plans (the request head sent upstream)
  and when it declines, and its bookkeeping callbacks;
* the tunnel on real sockets: a tunnel started by hand between an asyncio upstream and a
  raw client (the drain at a frame boundary, drops mid-frame), then the gateway as served
  (``chatgw serve``) in front of the Node upstream (what the upstream receives, what the
  client receives, 502s, refusals, flow control, the gauge and the access log).

The Node upstream (node_upstream.js) records the raw bytes of a ``/ws?raw=1`` socket and
sets ``X-Upstream-Ws`` on its 101; neither can pass through a frame relay.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from gw_helpers import GatewayProc, RssSampler, Upstreams, make_token, metric, spawn_gateway
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import modules
from gateway.app import Gateway
from gateway.config import load_config
from gateway.ws_tunnel import FrameScanner, Plan, WebSocketTunnel, close_frame

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key

# --------------------------------------------------------------------------- frames


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = b"\x01\x02\x03\x04"
) -> bytes:
    """One frame; masked with ``key`` (a client's), unmasked when ``key`` is None."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mask = 0x80 if key is not None else 0
    if n < 126:
        head = bytes((b0, mask | n))
    elif n < 65536:
        head = bytes((b0, mask | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mask | 127)) + n.to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """The next (unmasked) frame from ``sock``: (opcode, payload); ``buf`` keeps leftovers."""

    def need(n: int) -> None:
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {len(buf)} of {n} bytes")
            buf.extend(chunk)

    need(2)
    n = buf[1] & 0x7F
    size = 2
    if n == 126:
        need(4)
        n, size = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        need(10)
        n, size = int.from_bytes(buf[2:10], "big"), 10
    assert not buf[1] & 0x80, "a server's frame is never masked"
    need(size + n)
    opcode, payload = buf[0] & 0x0F, bytes(buf[size : size + n])
    del buf[: size + n]
    return opcode, payload


def unmask_close(data: bytes) -> tuple[int, bytes]:
    """(code, reason) of one masked close frame (its payload shorter than 126 bytes)."""
    assert data[0] == 0x88 and data[1] & 0x80
    n = data[1] & 0x7F
    key, body = data[2:6], data[6 : 6 + n]
    plain = bytes(b ^ key[i & 3] for i, b in enumerate(body))
    assert len(data) == 6 + n
    return int.from_bytes(plain[:2], "big"), plain[2:]


def recv_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


# --------------------------------------------------------------------------- scanner

SAMPLES = [
    frame(1, b"", key=None),
    frame(1, b"hello"),
    frame(2, bytes(range(125)), key=None),
    frame(2, bytes(126)),
    frame(0, b"x" * 300, fin=False, key=None),
    frame(2, b"y" * 65535),
    frame(9, b"ping", key=b"\xff\x00\xff\x00"),
    frame(2, b"z" * 65536, key=None),
    frame(8, close_payload(4401, b"token expired"), key=b"\xaa\xbb\xcc\xdd"),
    frame(8, close_payload(1000), key=None),  # a second close: only the first one counts
]


def offsets(frames: list[bytes]) -> list[int]:
    out, at = [], 0
    for f in frames:
        at += len(f)
        out.append(at)
    return out


def boundaries(chunks: list[bytes]) -> tuple[list[int], FrameScanner]:
    """Every frame boundary ``feed_to_boundary`` finds over ``chunks`` (stream offsets)."""
    sc = FrameScanner()
    found, base = [], 0
    for chunk in chunks:
        pos = 0
        while pos < len(chunk):
            at = sc.feed_to_boundary(chunk[pos:])
            if at < 0:
                break
            if at == 0:  # at a boundary already: step over it by scanning one byte
                sc.feed(chunk[pos : pos + 1])
                pos += 1
                continue
            pos += at
            found.append(base + pos)
        base += len(chunk)
    if sc.at_boundary and (not found or found[-1] != base):
        found.append(base)
    return found, sc


def test_scanner_ends_at_a_boundary_with_every_header_split_at_every_byte() -> None:
    stream = b"".join(SAMPLES)
    small = b"".join(f for f in SAMPLES if len(f) < 1000)
    # the whole stream a byte at a time (a header split at each of its bytes)
    sc = FrameScanner()
    for i in range(len(stream)):
        sc.feed(stream[i : i + 1])
        assert sc.at_boundary == (i + 1 in offsets(SAMPLES))
    assert sc.close_code == 4401 and sc.closed
    # the small frames cut in two at every position
    for cut in range(len(small) + 1):
        sc = FrameScanner()
        sc.feed(small[:cut])
        sc.feed(small[cut:])
        assert sc.at_boundary and sc.left == 0 and sc.part is None
        assert sc.close_code == 4401


def test_scanner_finds_every_frame_boundary_whatever_the_reads() -> None:
    stream = b"".join(SAMPLES)
    want = offsets(SAMPLES)
    for size in (1, 2, 3, 7, 13, 14, 1000, 65536, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        found, sc = boundaries(chunks)
        assert found == want, size
        assert sc.close_code == 4401


def test_scanner_reads_lengths_of_7_16_and_64_bits_masked_or_not() -> None:
    for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        for key in (None, b"\x00\x00\x00\x00", b"\x12\x34\x56\x78"):
            f = frame(2, b"\x00" * n, key=key)
            sc = FrameScanner()
            sc.feed(f[:-1] if n else f)
            assert sc.at_boundary == (n == 0)
            if n:
                assert sc.left == 1
                sc.feed(f[-1:])
                assert sc.at_boundary


def test_scanner_reads_the_close_code_unmasked_and_1005_without_one() -> None:
    cases = [
        (frame(8, close_payload(1001, b"going"), key=b"\x81\x42\x00\xff"), 1001),
        (frame(8, close_payload(4000, b"bye"), key=None), 4000),
        (frame(8, b"", key=b"\x01\x01\x01\x01"), 1005),
        (frame(8, b"", key=None), 1005),
        (frame(8, b"\x03", key=None), 1002),  # one byte: no valid code
    ]
    for data, code in cases:
        for cut in range(len(data) + 1):
            sc = FrameScanner()
            assert not sc.closed and sc.close_code is None
            sc.feed(data[:cut])
            sc.feed(data[cut:])
            assert sc.closed and sc.close_code == code and sc.at_boundary, (data, cut)
    assert close_frame(1011) == b"\x88\x02\x03\xf3"
    assert unmask_close(close_frame(1000, b"gateway shutting down", masked=True)) == (
        1000,
        b"gateway shutting down",
    )


def test_scanner_in_a_payload_takes_the_fast_path_and_keeps_no_bytes() -> None:
    sc = FrameScanner()
    sc.feed(frame(2, b"\x00" * 1_000_000, key=None)[:10])
    assert sc.left == 1_000_000 and sc.part is None
    sc.feed(b"\x00" * 999_999)
    assert sc.left == 1 and not sc.at_boundary
    sc.feed(b"\x00" + b"\x81\x85")  # the last payload byte, then half of a header
    assert sc.part == b"\x81\x85" and not sc.at_boundary
    assert sc.feed_to_boundary(b"\x01\x02\x03\x04" + b"hello") == 9


_frames = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 8, 9, 10]),
        st.one_of(
            st.integers(0, 140),
            st.integers(65530, 65540),
            st.sampled_from([126, 127, 70000]),
        ),
        st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
        st.integers(1000, 4999),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(frames=_frames, cuts=st.lists(st.integers(0, 300_000), max_size=12))
def test_scanner_property_boundaries_and_first_close_code(
    frames: list[tuple[int, int, bytes | None, int]], cuts: list[int]
) -> None:
    data: list[bytes] = []
    first_close = None
    for opcode, n, key, code in frames:
        if opcode == 8:
            payload = close_payload(code, b"r" * max(0, min(n, 123) - 2)) if n >= 2 else b""
            if first_close is None:
                first_close = code if n >= 2 else 1005
        else:
            payload = bytes(n)
        data.append(frame(opcode, payload, key=key))
    stream = b"".join(data)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    found, sc = boundaries(chunks)
    assert found == offsets(data)
    assert sc.close_code == first_close
    plain = FrameScanner()
    for chunk in chunks:
        plain.feed(chunk)
    assert plain.at_boundary and plain.close_code == first_close


# --------------------------------------------------------------------------- the plan

PLAN_ROUTES = """
settings: {backend_header: true, access_log: false, force_header: X-Gateway-Force}
defaults: {sticky: none}
upstreams:
  plain: {url: "http://127.0.0.1:8001/base", connect_timeout: 3s}
  tls: {url: "https://legacy.example"}
routes:
  - {name: ws, match: {path: /ws, websocket: true}, legacy: plain}
  - {name: ws-tls, match: {path: /ws-tls, websocket: true}, legacy: tls}
  - {name: ws-new, match: {path: /ws-new, websocket: true}, legacy: plain, module: session,
     new_percent: 100}
  - {name: http, match: {prefix: /api}, legacy: plain}
"""


@pytest.fixture
def planner(tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "routes.yaml"
    path.write_text(PLAN_ROUTES)
    gw = Gateway(load_config(str(path), known_modules=modules.names()), env={})
    yield gw


def _upgrade_headers(**extra: str) -> list[tuple[bytes, bytes]]:
    base = [
        (b"host", b"chat.example"),
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat.v1, chat.v2"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"keep-alive", b"timeout=5"),
        (b"content-length", b"0"),
        (b"x-forwarded-for", b"10.1.1.1"),
        (b"x-forwarded-host", b"evil.example"),
        (b"cookie", b"a=b"),
    ]
    return base + [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in extra.items()]


def _head_lines(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    return first, [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]


def test_plan_sends_the_clients_upgrade_with_forwarding_headers(planner: Gateway) -> None:
    headers = _upgrade_headers(x_request_id="client-rid-1", x_gateway_force="not-a-token")
    plan = planner.websocket_tunnel(b"/ws?token=abc&x=%20", headers, ("10.0.0.7", 5555), "http")
    assert isinstance(plan, Plan)
    assert (plan.host, plan.port, plan.connect_timeout) == ("127.0.0.1", 8001, 3.0)
    first, lines = _head_lines(plan.head)
    assert first == b"GET /base/ws?token=abc&x=%20 HTTP/1.1"
    assert lines == [
        (b"host", b"chat.example"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat.v1, chat.v2"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"cookie", b"a=b"),
        (b"x-forwarded-for", b"10.1.1.1, 10.0.0.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"chat.example"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"x-request-id", b"client-rid-1"),
    ]


def test_plan_gives_a_new_request_id_for_a_missing_or_bad_one(planner: Gateway) -> None:
    for headers in (_upgrade_headers(), _upgrade_headers(x_request_id="bad id")):
        plan = planner.websocket_tunnel(b"/ws", headers, None, "http")
        assert plan is not None
        rid = dict(_head_lines(plan.head)[1])[b"x-request-id"]
        assert len(rid) == 32 and rid != b"bad id"


def test_plan_declines_what_the_asgi_app_must_answer(planner: Gateway) -> None:
    headers = _upgrade_headers()
    client = ("10.0.0.7", 5555)
    assert planner.websocket_tunnel(b"/nowhere", headers, client, "http") is None  # its 404
    assert planner.websocket_tunnel(b"/ws/%2e%2e/x", headers, client, "http") is None
    assert planner.websocket_tunnel(b"/api/ws", headers, client, "http") is None  # not a WS route
    assert planner.websocket_tunnel(b"/ws-new", headers, client, "http") is None  # module
    assert planner.websocket_tunnel(b"/ws-tls", headers, client, "http") is None  # https
    planner.begin_drain()
    assert planner.websocket_tunnel(b"/ws", headers, client, "http") is None  # its 503


def test_plan_callbacks_keep_the_gauge_the_drain_registry_and_the_guards_errors(
    planner: Gateway,
) -> None:
    def gauge() -> float:
        return planner.metrics.websockets_open.labels("ws", "legacy")._value.get()

    def window() -> tuple[int, int]:
        s = planner.window.stats("ws", "legacy")
        return s.requests, s.errors

    for code, status, errors in ((1000, 101, 0), (None, 101, 0), (1011, 101, 1), (1006, 101, 1),
                                 (1001, 101, 0), (None, 502, 1)):  # fmt: skip
        before = window()
        plan = planner.websocket_tunnel(b"/ws", _upgrade_headers(), None, "http")
        assert plan is not None and plan.opened and plan.closed
        marker: Any = object()
        plan.opened(marker)
        assert gauge() == 1 and marker in planner._open_ws
        plan.closed(marker, status, code)
        assert gauge() == 0 and marker not in planner._open_ws
        after = window()
        assert (after[0] - before[0], after[1] - before[1]) == (1, errors), code


# --------------------------------------------------------------------------- tunnel by hand

UPSTREAM_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-From: upstream\r\n\r\n"
)


class Rig:
    """A tunnel between a raw client socket and an asyncio upstream, in one loop."""

    def __init__(self) -> None:
        self.up_received = bytearray()
        self.up_writer: asyncio.StreamWriter | None = None
        self.up_eof = asyncio.Event()
        self.up_request = b""
        self.tunnels: list[WebSocketTunnel] = []
        self.closed: list[tuple[int, int | None]] = []
        self.connections: set[Any] = set()

    async def start(self, answer: bytes = UPSTREAM_101) -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.up_request = await reader.readuntil(b"\r\n\r\n")
            self.up_writer = writer
            writer.write(answer)
            while chunk := await reader.read(65536):
                self.up_received += chunk
            self.up_eof.set()

        self.up_server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        up_port = self.up_server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        rig = self

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                head = b"GET /ws HTTP/1.1\r\nhost: x\r\n\r\n"
                plan = Plan("127.0.0.1", up_port, head, 2.0, None, rig._closed)
                tunnel = WebSocketTunnel(plan, transport, loop, rig.connections)
                transport.set_protocol(tunnel.client_half)
                tunnel.start()
                rig.tunnels.append(tunnel)

        self.server = await loop.create_server(Accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        got = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        assert got == answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"

    def _closed(self, tunnel: WebSocketTunnel, status: int, code: int | None) -> None:
        self.closed.append((status, code))

    async def up_has(self, n: int) -> bytes:
        for _ in range(500):
            if len(self.up_received) >= n:
                return bytes(self.up_received)
            await asyncio.sleep(0.01)
        raise AssertionError(f"upstream has {len(self.up_received)} of {n} bytes")

    async def client_reads(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), 5)

    async def client_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), 5)

    async def done(self) -> None:
        for _ in range(500):
            if self.closed:
                break
            await asyncio.sleep(0.01)
        self.server.close()
        self.up_server.close()


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def test_drain_waits_for_each_directions_frame_boundary() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        assert rig.tunnels[0] in rig.connections  # uvicorn's shutdown() reaches it
        ours = frame(2, b"A" * 1000, key=b"\x05\x06\x07\x08")
        rig.writer.write(ours[:300])  # half a frame each way
        theirs = frame(2, b"B" * 1000, key=None)
        assert rig.up_writer is not None
        rig.up_writer.write(theirs[:500])
        await rig.up_has(300)
        assert await rig.client_reads(500) == theirs[:500]

        await rig.tunnels[0].going_away()
        await asyncio.sleep(0.1)
        assert len(rig.up_received) == 300  # nothing cut into the frame
        rig.writer.write(ours[300:] + frame(1, b"after the drain"))
        rig.up_writer.write(theirs[500:] + frame(1, b"late", key=None))
        got = await rig.up_has(len(ours) + 29)
        assert got[: len(ours)] == ours
        assert unmask_close(got[len(ours) :]) == (1000, b"gateway shutting down")
        assert await rig.client_reads(len(theirs) - 500) == theirs[500:]
        assert await rig.client_eof() == b"\x88\x17\x03\xe9gateway shutting down"
        await asyncio.wait_for(rig.up_eof.wait(), 5)
        assert len(rig.up_received) == len(ours) + 29  # the frame after it: dropped
        await rig.done()
        assert rig.closed == [(101, 1001)]
        assert not rig.connections

    run(scenario())


def test_drain_without_a_boundary_closes_both_after_a_second() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        rig.writer.write(frame(2, b"A" * 1000)[:100])
        await rig.up_has(100)
        t0 = time.monotonic()
        rig.tunnels[0].shutdown()  # (uvicorn's call): as going_away
        # the client's direction is between frames: its 1001 goes at once
        assert await rig.client_reads(25) == b"\x88\x17\x03\xe9gateway shutting down"
        await asyncio.wait_for(rig.up_eof.wait(), 5)
        assert 0.9 < time.monotonic() - t0 < 3
        assert len(rig.up_received) == 100  # no close frame in the middle of a frame
        assert await rig.client_eof() == b""
        await rig.done()
        assert rig.closed == [(101, 1001)]

    run(scenario())


def test_upstream_drop_mid_frame_drops_the_client_without_a_close_frame() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        assert rig.up_writer is not None
        rig.up_writer.write(frame(1, b"x" * 50, key=None)[:20])
        assert await rig.client_reads(20)
        rig.up_writer.transport.abort()
        assert await rig.client_eof() == b""  # a 1011 here would be read as payload
        await rig.done()
        assert rig.closed == [(101, 1006)]

    run(scenario())


def test_upstream_drop_between_frames_sends_the_client_1011() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        assert rig.up_writer is not None
        rig.up_writer.write(frame(1, b"x" * 50, key=None))
        await rig.client_reads(52)
        rig.up_writer.close()
        assert await rig.client_eof() == b"\x88\x02\x03\xf3"
        await rig.done()
        assert rig.closed == [(101, 1011)]

    run(scenario())


def test_client_drop_sends_the_upstream_a_masked_1011_between_frames_only() -> None:
    async def scenario(mid_frame: bool) -> None:
        rig = Rig()
        await rig.start()
        sent = frame(1, b"hello") + (frame(1, b"x" * 50)[:9] if mid_frame else b"")
        rig.writer.write(sent)
        await rig.up_has(len(sent))
        rig.writer.transport.abort()
        await asyncio.wait_for(rig.up_eof.wait(), 5)
        rest = bytes(rig.up_received[len(sent) :])
        if mid_frame:
            assert rest == b""
        else:
            assert unmask_close(rest) == (1011, b"")
        await rig.done()
        assert rig.closed == [(101, None)]  # the client closed first: nothing sent to it

    run(scenario(False))
    run(scenario(True))


def test_normal_close_passes_both_close_frames_and_reports_the_upstreams_code() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        assert rig.up_writer is not None
        theirs = frame(8, close_payload(4401, b"token expired"), key=None)
        rig.up_writer.write(theirs)
        assert await rig.client_reads(len(theirs)) == theirs
        ours = frame(8, close_payload(4401), key=b"\x09\x08\x07\x06")
        rig.writer.write(ours)
        assert await rig.up_has(len(ours)) == ours
        rig.up_writer.close()  # the server closes the TCP connection first (RFC 6455 §7.1.1)
        assert await rig.client_eof() == b""
        await rig.done()
        assert rig.closed == [(101, 4401)]

    run(scenario())


# --------------------------------------------------------------------------- raw client


def handshake(port: int, target: str, extra: str = "") -> tuple[socket.socket, bytes, bytearray]:
    """A raw client's upgrade: (socket, the answer's head, bytes read after it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the answer's head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head + b"\r\n\r\n", bytearray(rest)


def _wait(fetch: Any, timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_the_upstream_receives_the_clients_frames_byte_for_byte(gw, upstreams) -> None:
    tag = uuid.uuid4().hex
    sock, head, buf = handshake(gw.port, f"/ws?raw=1&tag={tag}")
    assert head.startswith(b"HTTP/1.1 101 ")
    sent = (
        frame(1, b"hel", fin=False, key=b"\x11\x22\x33\x44")  # one message in three frames
        + frame(0, b"lo, ", fin=False, key=b"\x00\x00\x00\x00")
        + frame(0, "你好".encode(), key=b"\xde\xad\xbe\xef")
        + frame(9, b"are you there", key=b"\x01\x01\x01\x01")
        + frame(2, bytes(i % 251 for i in range(70_000)), key=b"\x5a\xa5\x5a\xa5")
    )
    for i in range(0, 203, 7):  # the first headers split across segments
        sock.sendall(sent[i : i + 7])
        time.sleep(0.001)
    sock.sendall(sent[203:])
    assert read_frame(sock, buf) == (1, "hello, 你好".encode())
    assert read_frame(sock, buf) == (10, b"are you there")
    assert read_frame(sock, buf) == (2, bytes(i % 251 for i in range(70_000)))
    closing = frame(8, close_payload(4000, b"bye"), key=b"\x0f\x0e\x0d\x0c")
    sock.sendall(closing)
    assert read_frame(sock, buf) == (8, close_payload(4000, b"bye"))
    assert recv_until_closed(sock) == b""
    sock.close()
    raw = base64.b64decode(upstreams.side(f"/__wsraw?tag={tag}")["raw"])
    assert raw == sent + closing
    closes = _wait(lambda: upstreams.side(f"/__wscloses?tag={tag}")["closes"])
    assert closes == [{"code": 4000, "reason": "bye"}]


def test_the_101_and_its_headers_come_from_the_upstream(gw) -> None:
    sock, head, _ = handshake(gw.port, "/ws", "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n")
    sock.close()
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
    assert headers["x-upstream-ws"] == "a"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["sec-websocket-protocol"] == "chat.v2"


def test_upstream_drop_closes_the_client_with_1011(gw) -> None:
    with connect(gw.ws_url + "/ws", proxy=None, compression=None, open_timeout=10) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.send("drop")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011


def test_client_drop_closes_the_upstream_with_1011(gw, upstreams) -> None:
    tag = uuid.uuid4().hex
    sock, _, buf = handshake(gw.port, f"/ws?tag={tag}")
    sock.sendall(frame(1, b"still here"))
    assert read_frame(sock, buf) == (1, b"still here")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset, no close frame
    closes = _wait(lambda: upstreams.side(f"/__wscloses?tag={tag}")["closes"])
    assert closes == [{"code": 1011, "reason": ""}]


def test_upstream_404_passes_through_byte_for_byte(gw, upstreams) -> None:
    body = b'{"error":{"code":"not_found","message":"no such path"}}'
    want = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    sock, head, rest = handshake(gw.port, "/ws/")
    got = head + bytes(rest) + recv_until_closed(sock)
    sock.close()
    assert got == want
    direct, head, rest = handshake(upstreams.port["a"], "/ws/")
    assert head + bytes(rest) + recv_until_closed(direct) == want
    direct.close()


# --------------------------------------------------------------------------- own gateway


class _Silent:
    """A TCP server that accepts, reads and never answers; or answers ``reply`` and closes."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply is not None:
                conn.settimeout(5)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    conn.sendall(self.reply)
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture(scope="module")
def odd_upstreams() -> Iterator[dict[str, _Silent]]:
    made = {
        "silent": _Silent(),
        "garbage": _Silent(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        "mute": _Silent(b""),  # closes without a byte
    }
    yield made
    for s in made.values():
        s.close()


@pytest.fixture(scope="module")
def tgw(
    upstreams: Upstreams,
    dead_port: int,
    odd_upstreams: dict[str, _Silent],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProc]:
    def ws(name: str, legacy: str) -> dict[str, Any]:
        return {"name": name, "match": {"path": f"/{name}", "websocket": True}, "legacy": legacy}

    odd = {k: {"url": f"http://127.0.0.1:{s.port}", "connect_timeout": "1s"}
           for k, s in odd_upstreams.items()}  # fmt: skip
    cfg = {
        "settings": {"access_log": True},
        "upstreams": {
            "a": {"url": upstreams.url("a")},
            "dead": {"url": f"http://127.0.0.1:{dead_port}", "connect_timeout": "1s"},
            **odd,
        },
        "routes": [
            {"name": "ws", "match": {"path": "/ws", "websocket": True}, "legacy": "a"},
            ws("ws-keepalive", "a"),
            ws("dead", "dead"),
            *(ws(k, k) for k in odd),
        ],
    }
    proc = spawn_gateway(cfg, tmp_path_factory.mktemp("gateway-tunnel"))
    yield proc
    proc.stop()


def _line(gw: GatewayProc, rid: str) -> dict[str, Any]:
    lines = _wait(lambda: [x for x in gw.access_lines() if x.get("rid") == rid])
    assert len(lines) == 1, lines
    return lines[0]


def test_gauge_and_access_log_of_a_tunnelled_websocket(tgw) -> None:
    def gauge() -> float:
        return metric(tgw.metrics(), "gateway_websockets_open", route="ws", backend="legacy")

    rid = f"tun-{uuid.uuid4().hex}"
    tok = make_token("tunnel-user")
    with connect(
        f"{tgw.ws_url}/ws?token={tok}", proxy=None, additional_headers={"X-Request-Id": rid}
    ) as ws:
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=5))
        assert gauge() == 1
    assert dict(seen["headers"])["x-request-id"] == rid
    assert _wait(lambda: gauge() == 0)
    line = _line(tgw, rid)
    assert (line["route"], line["backend"], line["method"]) == ("ws", "legacy", "GET")
    assert (line["path"], line["status"], line["bytes"]) == ("/ws", 101, 0)
    assert tok not in json.dumps(line)
    text = tgw.metrics()
    assert metric(text, "gateway_requests_total", route="ws", backend="legacy", status="1xx") >= 1


@pytest.mark.parametrize("route", ["dead", "silent", "garbage", "mute"])
def test_upstream_that_does_not_answer_an_http_head_gets_the_client_a_502(tgw, route) -> None:
    rid = f"tun-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    sock, head, rest = handshake(tgw.port, f"/{route}", f"X-Request-Id: {rid}\r\n")
    body = bytes(rest) + recv_until_closed(sock)
    sock.close()
    assert time.monotonic() - t0 < 3  # its connect_timeout (1 s) covers the handshake too
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"\r\nconnection: close\r\n" in head
    assert b"\r\ncontent-length: %d\r\n" % len(body) in head
    assert json.loads(body)["error"]["code"] == "bad_gateway"
    assert _line(tgw, rid)["status"] == 502


def test_refusal_on_a_kept_alive_connection_ends_with_its_chunked_body(tgw) -> None:
    rid = f"tun-{uuid.uuid4().hex}"
    sock, head, rest = handshake(tgw.port, "/ws-keepalive", f"X-Request-Id: {rid}\r\n")
    t0 = time.monotonic()
    got = head + bytes(rest) + recv_until_closed(sock)
    sock.close()
    assert got == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n5\r\nnope!\r\n0\r\n\r\n"
    )
    assert time.monotonic() - t0 < 2  # closed at the body's end, not at the upstream's
    assert _line(tgw, rid)["status"] == 403


def test_a_client_that_does_not_read_pauses_the_upstream_not_the_gateways_memory(
    tgw, upstreams
) -> None:
    tag = uuid.uuid4().hex
    mib, kib = 200, 60
    frames = math.ceil(mib * 1024 * 1024 / (kib * 1024))
    total = frames * (4 + kib * 1024)  # 60 KiB: a 16-bit length, a 4-byte header
    sock, _, buf = handshake(tgw.port, f"/ws?tag={tag}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    with RssSampler(tgw.pid) as rss:
        sock.sendall(frame(1, f"flood:{mib}:{kib}".encode()))
        time.sleep(1.5)
        first = upstreams.side(f"/__wsflood?tag={tag}")
        time.sleep(0.5)
        second = upstreams.side(f"/__wsflood?tag={tag}")
        # stalled: the upstream's socket no longer drains, far short of the whole stream
        assert not second["done"]
        assert second["written"] == first["written"] < total // 2
        got = len(buf)
        sock.settimeout(10)
        while got < total:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {got} of {total} bytes"
            got += len(chunk)
    assert got == total
    assert upstreams.side(f"/__wsflood?tag={tag}")["done"]
    sock.close()
    assert rss.growth < 32 * 1024 * 1024, rss.growth
