"""gateway.http11: a response's head and first body chunk leave in one write, nothing later.

A real uvicorn server on a real socket in a thread; the only instrumentation is a count of
the ``write()`` calls the protocol makes on its transport.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from gw_helpers import ThreadServer
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import http11
from gateway.http11 import CoalescingCycle, GatewayHttpProtocol, ResponseNotes

BODY = b'{"ok":true,"pad":"' + b"x" * 380 + b'"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/late":  # headers now, the body 0.6 s later (an SSE stream's first event)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.6)
        await send({"type": "http.response.body", "body": b"data: 1\n\n"})
        return
    if path == "/crash":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom after the head")
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    cycle = getattr(send, "__self__", None)
    if scope["query_string"] == b"respond":
        # the whole response in one call, as the proxy sends a small upstream answer
        assert type(cycle) is CoalescingCycle, "served by gateway.http11"
        if path in ODD:
            headers, (body,) = ODD[path]
            await cycle.respond(200, headers, body)
        elif path == "/empty":
            await cycle.respond(204, [], b"")
        else:
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", b"%d" % len(BODY))]  # fmt: skip
            await cycle.respond(200, headers, BODY)
        return
    if path in ODD:  # responses uvicorn frames, checks or refuses in its own way
        headers, bodies = ODD[path]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, body in enumerate(bodies):
            more = i < len(bodies) - 1
            await send({"type": "http.response.body", "body": body, "more_body": more})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


ODD: dict[str, tuple[list[tuple[bytes, bytes]], list[bytes]]] = {
    "/close": ([(b"content-length", b"2"), (b"Connection", b"keep-alive, Close")], [b"ok"]),
    "/no-length": ([(b"content-type", b"text/plain")], [b"abc"]),
    "/parts": ([(b"Content-Length", b"6")], [b"abc", b"", b"def"]),
    "/too-long": ([(b"content-length", b"2")], [b"abc"]),
    "/too-short": ([(b"content-length", b"4")], [b"abc"]),
    "/bad-value": ([(b"x-a", b"1\r\nset-cookie: x=1"), (b"content-length", b"0")], [b""]),
    "/bad-name": ([(b"x a", b"1"), (b"content-length", b"0")], [b""]),
    "/chunked": ([(b"transfer-encoding", b"chunked")], [b"ab", b"c"]),
}


WRITES: list[int] = []


class _Counting:
    def __init__(self, real: asyncio.Transport) -> None:
        self._real = real

    def write(self, data: bytes) -> None:
        WRITES.append(len(data))
        self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _counting(base: type[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
    class Counted(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(_Counting(transport))

    return Counted


class _Server(ThreadServer):
    def __init__(
        self, protocol: type[HttpToolsProtocol], keep_alive: float = 5, app_: Any = app
    ) -> None:
        super().__init__(
            uvicorn.Config(
                app_, loop="uvloop", http=_counting(protocol), lifespan="off",
                log_level="critical", interface="asgi3", proxy_headers=False,
                timeout_keep_alive=keep_alive,
            )
        )  # fmt: skip


@pytest.fixture(scope="module")
def ours() -> Iterator[_Server]:
    s = _Server(GatewayHttpProtocol)
    yield s
    s.stop()


def _get(port: int, path: str, method: str = "GET", n: int = 1) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(5)
    req = f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    c.sendall(req * n)
    return c


def _read_until(c: socket.socket, marker: bytes, deadline_s: float = 5) -> bytes:
    data = b""
    end = time.monotonic() + deadline_s
    while marker not in data:
        c.settimeout(max(0.01, end - time.monotonic()))
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _writes_for(server: _Server, path: str) -> list[int]:
    WRITES.clear()
    with _get(server.port, path) as c:
        data = _read_until(c, BODY)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(BODY)
    time.sleep(0.05)
    return list(WRITES)


def test_head_and_body_of_a_small_response_leave_in_one_write(ours: _Server) -> None:
    writes = _writes_for(ours, "/small")
    assert len(writes) == 1 and writes[0] > len(BODY)


def test_uvicorns_own_protocol_makes_two_writes_for_the_same_response() -> None:
    # the control: the instrumentation sees the difference this module makes
    stock = _Server(HttpToolsProtocol)
    try:
        assert len(_writes_for(stock, "/small")) == 2
    finally:
        stock.stop()


def _exchange(port: int, path: str, method: str = "GET") -> bytes:
    """Everything the server sends for one request, until it closes or goes quiet."""
    with _get(port, path, method) as c:
        data = b""
        c.settimeout(0.5)
        try:
            while chunk := c.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return b"".join(
        line for line in data.splitlines(keepends=True) if not line.startswith(b"date: ")
    )


@pytest.mark.parametrize(
    ("method", "path"), [("GET", p) for p in ("/small", *ODD)] + [("HEAD", "/small")]
)
def test_the_same_bytes_as_uvicorns_own_send(ours: _Server, method: str, path: str) -> None:
    # The head and Content-Length bodies are written by CoalescingCycle itself: framing,
    # keep-alive, header checks and errors must stay uvicorn's (compared on the wire).
    stock = _Server(HttpToolsProtocol)
    try:
        expected = _exchange(stock.port, path, method)
    finally:
        stock.stop()
    assert _exchange(ours.port, path, method) == expected
    # and once more: the second time the header names and values are known ones
    assert _exchange(ours.port, path, method) == expected


ONE_BODY = ["/small", "/empty", *(p for p, (_, bodies) in ODD.items() if len(bodies) == 1)]


@pytest.mark.parametrize(("method", "path"), [("GET", p) for p in ONE_BODY] + [("HEAD", "/small")])
def test_a_whole_response_in_one_call_has_the_bytes_of_uvicorns_send(
    ours: _Server, method: str, path: str
) -> None:
    # CoalescingCycle.respond (the proxy's small answers) against stock uvicorn sending
    # the same response as two messages: framing, checks and errors on the wire.
    stock = _Server(HttpToolsProtocol)
    try:
        expected = _exchange(stock.port, path, method)
    finally:
        stock.stop()
    assert _exchange(ours.port, path + "?respond", method) == expected


def test_a_whole_response_in_one_call_leaves_in_one_write(ours: _Server) -> None:
    writes = _writes_for(ours, "/small?respond")
    assert len(writes) == 1 and writes[0] > len(BODY)


def test_an_invalid_header_value_is_refused_after_valid_ones_were_seen(ours: _Server) -> None:
    assert _exchange(ours.port, "/small").startswith(b"HTTP/1.1 200 OK")
    for _ in range(2):
        assert b"set-cookie" not in _exchange(ours.port, "/bad-value")


def test_the_apps_http_entry_is_called_when_it_offers_one() -> None:
    calls: list[str] = []

    class TwoDoors:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append(scope["type"])
            await app(scope, receive, send)

        async def asgi_http(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append("asgi_http")
            await app(scope, receive, send)

    global_app = TwoDoors()
    server = _Server(GatewayHttpProtocol, app_=global_app)
    try:
        assert _exchange(server.port, "/small").endswith(BODY)
        assert _exchange(server.port, "/small").endswith(BODY)
    finally:
        server.stop()
    assert calls == ["asgi_http", "asgi_http"]


def test_headers_are_not_held_while_the_body_is_late(ours: _Server) -> None:
    with _get(ours.port, "/late") as c:
        t0 = time.monotonic()
        head = _read_until(c, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert time.monotonic() - t0 < 0.4  # the body comes 0.6 s after the head
        rest = head.split(b"\r\n\r\n", 1)[1] + _read_until(c, b"0\r\n\r\n")
        assert b"data: 1" in rest
        assert time.monotonic() - t0 >= 0.5


def test_a_response_without_body_bytes_still_gets_its_head(ours: _Server) -> None:
    with _get(ours.port, "/empty") as c:
        assert _read_until(c, b"\r\n\r\n").startswith(b"HTTP/1.1 204 No Content\r\n")
    with _get(ours.port, "/small", method="HEAD") as c:
        head = _read_until(c, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert b"content-length: %d" % len(BODY) in head


def test_streamed_chunks_keep_their_order_and_framing(ours: _Server) -> None:
    with _get(ours.port, "/stream") as c:
        data = _read_until(c, b"0\r\n\r\n")
    assert data.split(b"\r\n\r\n", 1)[1] == b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"


def test_pipelined_requests_on_one_connection_each_get_a_whole_response(ours: _Server) -> None:
    with _get(ours.port, "/small", n=3) as c:
        data = b""
        while data.count(BODY) < 3:
            chunk = c.recv(65536)
            assert chunk
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3


def test_a_crash_after_the_head_sends_the_head_then_closes(ours: _Server) -> None:
    with _get(ours.port, "/crash") as c:
        data = _read_until(c, b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        while chunk := c.recv(65536):  # then EOF: the response is never ended as complete
            data += chunk
        assert not data.endswith(b"0\r\n\r\n")


def _closed_after(c: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes ``c`` (EOF), or None if still open after ``limit``."""
    t0 = time.monotonic()
    c.settimeout(limit)
    try:
        while c.recv(65536):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - t0


def test_idle_keep_alive_connections_close_after_the_timeout_busy_ones_stay() -> None:
    server = _Server(GatewayHttpProtocol, keep_alive=0.4)
    try:
        idle = _get(server.port, "/small")
        assert _read_until(idle, BODY).endswith(BODY)
        busy = _get(server.port, "/small")
        assert _read_until(busy, BODY).endswith(BODY)
        t0 = time.monotonic()
        for _ in range(8):  # a request every 0.15 s for 1.2 s: never idle for 0.4 s
            time.sleep(0.15)
            busy.sendall(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_until(busy, BODY).endswith(BODY)
        # no uvicorn timer per response: the connection is stamped idle for the sweeper
        (proto,) = [p for p in server.server.server_state.connections if p.idle_since]
        assert proto.timeout_keep_alive_task is None
        # the idle one was closed 0.4-0.5 s after its response (one sweep interval late at most)
        assert _closed_after(idle, 0.1) is not None
        assert time.monotonic() - t0 > 1.0
        closed = _closed_after(busy, 2.0)
        assert closed is not None and 0.3 <= closed <= 0.8
    finally:
        server.stop()


class _Holding:
    head = b""

    def hold(self, head: bytes) -> None:
        self.head = head


def _cycle(default_headers: list[tuple[bytes, bytes]]) -> CoalescingCycle:
    cycle = CoalescingCycle(
        scope={"method": "GET"}, transport=_Holding(), flow=None, logger=None,  # type: ignore[arg-type]
        access_logger=None, access_log=False, default_headers=default_headers,  # type: ignore[arg-type]
        message_event=asyncio.Event(), expect_100_continue=False, keep_alive=True,
        on_response=lambda: None,
    )  # fmt: skip
    cycle.notes = ResponseNotes()
    return cycle


def test_the_known_header_sets_stay_bounded_whatever_the_app_sends() -> None:
    for i in range(http11._KNOWN_MAX + 100):
        cycle = _cycle([])
        cycle._head({"status": 200, "headers": [(b"x-n%d" % i, b"v%d" % i)]})
        assert b"x-n%d: v%d\r\n" % (i, i) in cycle.transport.head
    assert len(http11._NAMES) <= http11._KNOWN_MAX
    assert len(http11._VALUES) <= http11._KNOWN_MAX


def test_the_servers_own_headers_are_rendered_again_when_uvicorn_renews_them() -> None:
    # uvicorn replaces the default-headers list when the Date changes (once a second)
    first = _cycle([(b"date", b"Mon, 23 Nov 2026 10:00:00 GMT")])
    first._head({"status": 200, "headers": [(b"content-length", b"0")]})
    second = _cycle([(b"date", b"Mon, 23 Nov 2026 10:00:01 GMT")])
    second._head({"status": 200, "headers": [(b"content-length", b"0")]})
    assert b"date: Mon, 23 Nov 2026 10:00:00 GMT\r\n" in first.transport.head
    assert b"date: Mon, 23 Nov 2026 10:00:01 GMT\r\n" in second.transport.head
