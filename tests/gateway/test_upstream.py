"""gateway.upstream against real sockets: small asyncio servers for faults, and Node.

No pytest-asyncio: each test body is a coroutine run by the ``run`` fixture, once on the
default asyncio loop and once on uvloop (what uvicorn runs in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from gw_helpers import Run, need
from httptools import HttpRequestParser

from gateway.upstream import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamExchange,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeout,
)

MiB = 1024 * 1024


# -- a tiny HTTP/1.1 server toolkit ---------------------------------------------------------


class Request:
    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.method = b""
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.body_len = 0
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.keep_body:
            self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def read_request(
    reader: asyncio.StreamReader, keep_body: bool = True, pace: float = 0.0
) -> Request | None:
    """One request, or None at EOF. ``pace`` sleeps between reads (a slow upstream)."""
    req = Request(keep_body)
    parser = HttpRequestParser(req)
    while not req.done:
        data = await reader.read(65536)
        if not data:
            return None
        parser.feed_data(data)
        if pace:
            await asyncio.sleep(pace)
    req.method = parser.get_method()
    return req


def response(body: bytes = b"", status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.connections = 0
        self.requests = 0


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """Serve ``handler`` per connection on an ephemeral port; counts connections."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    server = Server(srv.sockets[0].getsockname()[1])
    try:
        yield server
    finally:
        srv.close()
        for t in tasks:
            t.cancel()
        await asyncio.sleep(0)


def make_pool(url: str, **kw: Any) -> UpstreamPool:
    options: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_connections": 4}
    options.update(kw)
    return UpstreamPool(url, **options)


def ok_handler(server_ref: list[Server] | None = None) -> Handler:
    """Keep-alive handler answering each request with its target."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            writer.write(response(req.url))

    return handler


# -- failures -------------------------------------------------------------------------------


def test_refused_port_raises_connect_error_fast(run: Run) -> None:
    with socket.socket() as s:  # an ephemeral port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        pool = make_pool(f"http://127.0.0.1:{port}")
        start = time.monotonic()
        with pytest.raises(UpstreamConnectError) as err:
            await pool.request("GET", "/", [], None)
        assert err.value.stage == "connect"
        assert time.monotonic() - start < 1
        await pool.aclose()

    run(main())


def test_https_or_malformed_base_url_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="only http://"):
        make_pool("https://example.com")
    with pytest.raises(ValueError, match="expected http://host"):
        make_pool("http://example.com/?q=1")


def test_silent_server_raises_response_timeout(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url, read_timeout=5.0)
            start = time.monotonic()
            with pytest.raises(UpstreamTimeout) as err:
                await pool.request("GET", "/", [], None, read_timeout=0.2)
            assert err.value.stage == "response"
            assert 0.15 < time.monotonic() - start < 1.5
            await pool.aclose()

    run(main())


def test_body_silence_raises_body_timeout(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await asyncio.sleep(10)

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url, read_timeout=0.2)
            resp = await pool.request("GET", "/", [], None)
            assert await resp.__anext__() == b"first"
            with pytest.raises(UpstreamTimeout) as err:
                await resp.__anext__()
            assert err.value.stage == "body"
            await resp.aclose()
            await pool.aclose()

    run(main())


def _answer_after(delays: list[float]) -> Handler:
    """Keep-alive handler answering its n-th request after ``delays[n]`` seconds."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while (req := await read_request(reader)) is not None:
            await asyncio.sleep(delays[n])
            n += 1
            writer.write(response(req.url))

    return handler


def test_a_shorter_read_timeout_on_a_reused_connection_is_kept(run: Run) -> None:
    # The connection's one timer was set 5 s out by the first request; the second asks
    # for 0.2 s and must not wait for the first's.
    async def main() -> None:
        async with serve(_answer_after([0, 10])) as server:
            pool = make_pool(server.url)
            resp = await pool.request("GET", "/a", [], None, read_timeout=5.0)
            assert await resp.read() == b"/a"
            start = time.monotonic()
            with pytest.raises(UpstreamTimeout) as err:
                await pool.request("GET", "/b", [], None, read_timeout=0.2)
            assert err.value.stage == "response"
            assert 0.15 < time.monotonic() - start < 1.5
            assert server.connections == 1
            await pool.aclose()

    run(main())


def test_each_wait_on_a_reused_connection_gets_its_whole_read_timeout(run: Run) -> None:
    # The timer armed for the first request (0.4 s) fires while the second waits; the
    # second's deadline is later, so it must be moved, not taken for a timeout.
    async def main() -> None:
        async with serve(_answer_after([0, 0.35, 0.35])) as server:
            pool = make_pool(server.url)
            for path in ("/a", "/b", "/c"):
                resp = await pool.request("GET", path, [], None, read_timeout=0.4)
                assert await resp.read() == path.encode()
                await asyncio.sleep(0.2)
            assert server.connections == 1
            await pool.aclose()

    run(main())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_close_mid_body_raises_closed(run: Run, head: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head)
        await writer.drain()

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            resp = await pool.request("GET", "/", [], None)
            received = b""
            with pytest.raises(UpstreamClosed) as err:
                async for chunk in resp:
                    received += chunk
            assert received == b"partial"
            assert err.value.stage == "body"
            await pool.aclose()

    run(main())


def test_garbage_response_raises_protocol_error(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 banana\r\n\r\n")
        await asyncio.sleep(1)

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            with pytest.raises(UpstreamProtocolError) as err:
                await pool.request("GET", "/", [], None)
            assert err.value.stage == "response"
            await pool.aclose()

    run(main())


def test_crlf_in_header_or_target_is_refused_before_sending(run: Run) -> None:
    async def main() -> None:
        async with serve(ok_handler()) as server:
            pool = make_pool(server.url)
            with pytest.raises(ValueError, match="CR or LF"):
                await pool.request("GET", "/", [(b"x-a", b"1\r\nx-b: 2")], None)
            with pytest.raises(ValueError, match="CR or LF"):
                await pool.request("GET", "/ HTTP/1.1\r\nx: y\r\n", [], None)
            await pool.aclose()
            assert server.connections == 0

    run(main())


# -- bodies and framing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world", False),
        (b"HTTP/1.0 200 OK\r\n\r\nhello world", False),
    ],
    ids=["content-length", "chunked", "close-delimited", "http10"],
)
def test_body_framings_are_read_whole(run: Run, raw: bytes, reusable: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(raw)
            if not reusable:
                return

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            for _ in range(2):
                resp = await pool.request("GET", "/", [], None)
                assert resp.status == 200
                assert await resp.read() == b"hello world"
            assert server.connections == (1 if reusable else 2)
            await pool.aclose()

    run(main())


def test_head_204_304_have_no_body_and_keep_the_connection(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            if req.method == b"HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            elif req.url == b"/204":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif req.url == b"/304":
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
            else:
                writer.write(response(b"after"))

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            for method, target, status in [("HEAD", "/", 200), ("GET", "/204", 204)]:
                resp = await pool.request(method, target, [], None)
                assert (resp.status, await resp.read()) == (status, b"")
            resp = await pool.request("GET", "/304", [], None)
            assert (resp.status, await resp.read()) == (304, b"")
            resp = await pool.request("GET", "/", [], None)
            assert await resp.read() == b"after"
            assert server.connections == 1
            await pool.aclose()

    run(main())


def test_interim_100_continue_is_skipped(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"ok", 201))
        await asyncio.sleep(1)

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            resp = await pool.request("POST", "/", [], b"x")
            assert (resp.status, resp.reason, await resp.read()) == (201, b"X", b"ok")
            await pool.aclose()

    run(main())


def test_host_is_added_only_when_missing_and_framing_is_ours(run: Run) -> None:
    seen: list[Request] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            seen.append(req)
            writer.write(response(b""))

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url + "/prefix")
            headers = [(b"Content-Length", b"999"), (b"Transfer-Encoding", b"gzip")]
            await (await pool.request("POST", "/a?b=c", headers, b"abc")).aclose()
            await (await pool.request("GET", "/", [(b"HOST", b"legacy.local")], None)).aclose()
            assert seen[0].url == b"/prefix/a?b=c"
            assert seen[0].headers[b"host"] == f"127.0.0.1:{server.port}".encode()
            assert seen[0].headers[b"content-length"] == b"3"
            assert b"transfer-encoding" not in seen[0].headers
            assert bytes(seen[0].body) == b"abc"
            assert seen[1].headers[b"host"] == b"legacy.local"
            assert b"content-length" not in seen[1].headers
            await pool.aclose()

    run(main())


# -- pool -----------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(run: Run) -> None:
    async def main() -> None:
        async with serve(ok_handler()) as server:
            pool = make_pool(server.url)
            for i in range(20):
                resp = await pool.request("GET", f"/{i}", [], None)
                assert await resp.read() == f"/{i}".encode()
            assert server.connections == 1
            await pool.aclose()

    run(main())


def test_connection_close_response_is_not_reused(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"bye", extra=b"Connection: close\r\n"))

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            for _ in range(3):
                assert await (await pool.request("GET", "/", [], None)).read() == b"bye"
            assert server.connections == 3
            await pool.aclose()

    run(main())


def test_idle_connection_closed_by_server_is_dropped_before_reuse(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"once"))  # announces keep-alive, then closes while idle
        await writer.drain()

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            assert await (await pool.request("GET", "/", [], None)).read() == b"once"
            await asyncio.sleep(0.1)  # the FIN arrives while the connection is idle
            assert await (await pool.request("GET", "/", [], None)).read() == b"once"
            assert server.connections == 2
            await pool.aclose()

    run(main())


def stale_second_request_handler() -> Handler:
    """Connection 1 answers one request, then closes on the next without a byte."""
    state = {"n": 0}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["n"] += 1
        first = state["n"] == 1
        while (req := await read_request(reader)) is not None:
            if first and req.url == b"/second":
                return  # closes: the race of a keep-alive timeout with our write
            writer.write(response(b"from connection %d" % state["n"]))

    return handler


def test_reused_connection_closed_without_answer_is_retried_once(run: Run) -> None:
    async def main() -> None:
        async with serve(stale_second_request_handler()) as server:
            pool = make_pool(server.url)
            await (await pool.request("GET", "/first", [], None)).read()
            resp = await pool.request("POST", "/second", [], b"payload")
            assert await resp.read() == b"from connection 2"
            assert server.connections == 2
            await pool.aclose()

    run(main())


def test_reused_connection_closed_with_consumed_stream_body_is_not_retried(run: Run) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"only once"

    async def main() -> None:
        async with serve(stale_second_request_handler()) as server:
            pool = make_pool(server.url)
            await (await pool.request("GET", "/first", [], None)).read()
            with pytest.raises(UpstreamClosed) as err:
                await pool.request("POST", "/second", [], body())
            assert err.value.stage in ("request", "response")
            assert server.connections == 1
            await pool.aclose()

    run(main())


def test_pool_bounds_concurrency_and_never_mixes_responses(run: Run) -> None:
    in_flight = [0, 0]  # current, max

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            await asyncio.sleep(0.01)
            in_flight[0] -= 1
            writer.write(response(req.url * 50))

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url, max_connections=2)

            async def one(i: int) -> None:
                resp = await pool.request("GET", f"/req-{i}", [], None)
                assert await resp.read() == f"/req-{i}".encode() * 50

            await asyncio.gather(*(one(i) for i in range(40)))
            assert server.connections == 2
            assert in_flight[1] == 2
            await pool.aclose()

    run(main())


def test_waiting_for_a_busy_pool_times_out(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url, max_connections=1, pool_timeout=0.2)
            hog = asyncio.create_task(pool.request("GET", "/", [], None))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTimeout) as err:
                await pool.request("GET", "/", [], None)
            assert err.value.stage == "pool"
            hog.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hog
            await pool.aclose()

    run(main())


# -- cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["head", "body"])
def test_cancelled_caller_closes_the_upstream_socket(run: Run, where: str) -> None:
    async def main() -> None:
        eof = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            if where == "body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
            if await reader.read() == b"":
                eof.set()

        async with serve(handler) as server:
            pool = make_pool(server.url)

            async def client() -> None:
                resp = await pool.request("GET", "/", [], None)
                async for _ in resp:
                    pass

            task = asyncio.create_task(client())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(eof.wait(), 2)
            assert pool._count == 0
            await pool.aclose()

    run(main())


# -- streaming and backpressure --------------------------------------------------------------


def test_streamed_request_body_of_20mib_uses_bounded_memory(run: Run) -> None:
    total = 20 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_request(reader, keep_body=False, pace=0.0005)  # a slow reader
        assert req is not None
        writer.write(response(b"%d %s" % (req.body_len, req.headers.get(b"transfer-encoding"))))

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // 65536):
            yield bytes(65536)  # a fresh buffer each time, as a client's upload would be

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            tracemalloc.start()
            try:
                resp = await pool.request("PUT", "/upload", [], body())
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert await resp.read() == b"%d chunked" % total
            assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while uploading 20 MiB"
            await pool.aclose()

    run(main())


def test_streamed_body_with_declared_length_is_sent_raw(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            te = req.headers.get(b"transfer-encoding", b"-")
            writer.write(response(bytes(req.body) + b" " + te))

    async def body() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            resp = await pool.request("POST", "/", [(b"content-length", b"11")], body())
            assert await resp.read() == b"hello world -"
            with pytest.raises(UpstreamProtocolError) as err:
                await pool.request("POST", "/", [(b"content-length", b"5")], body())
            assert err.value.stage == "request"
            await pool.aclose()

    run(main())


def test_slow_reader_of_50mib_response_gets_backpressure(run: Run) -> None:
    total = 50 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = memoryview(bytes(65536))
        for _ in range(total // 65536):
            writer.write(block)
            await writer.drain()

    async def main() -> None:
        async with serve(handler) as server:
            pool = make_pool(server.url)
            tracemalloc.start()
            try:
                resp = await pool.request("GET", "/big", [], None)
                received = 0
                async for chunk in resp:
                    received += len(chunk)
                    if received < 8 * MiB:
                        await asyncio.sleep(0.002)  # lag behind while the server pushes
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert received == total
            assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while reading 50 MiB"
            await pool.aclose()

    run(main())


# -- a real Node upstream -------------------------------------------------------------------

NODE_SERVER = r"""
const http = require('http');
const s = http.createServer((q, r) => {
  let n = 0;
  q.on('data', (c) => { n += c.length; });
  q.on('end', () => {
    const out = JSON.stringify({method: q.method, url: q.url, length: n,
      te: q.headers['transfer-encoding'] || null, port: q.socket.remotePort});
    if (q.url === '/chunked') { r.write(out.slice(0, 10)); r.end(out.slice(10)); return; }
    r.writeHead(200, {'content-type': 'application/json'});
    r.end(out);
  });
});
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
"""


@pytest.fixture
def node_url() -> Iterator[str]:
    need(shutil.which("node") is not None, "node is not on PATH")
    proc = subprocess.Popen(["node", "-e", NODE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_node_http_server_round_trips(run: Run, node_url: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    async def main() -> None:
        pool = make_pool(node_url)
        got = []
        for method, target, payload in [
            ("GET", "/a?b=1", None),
            ("POST", "/post", b"{}"),
            ("PUT", "/stream", body()),
            ("GET", "/chunked", None),
        ]:
            resp = await pool.request(method, target, [(b"accept", b"*/*")], payload)
            assert resp.status == 200
            got.append(json.loads(await resp.read()))
        assert [(g["method"], g["url"], g["length"]) for g in got] == [
            ("GET", "/a?b=1", 0),
            ("POST", "/post", 2),
            ("PUT", "/stream", 10000),
            ("GET", "/chunked", 0),
        ]
        assert got[2]["te"] == "chunked"
        assert len({g["port"] for g in got}) == 1  # one kept-alive connection throughout
        await pool.aclose()

    run(main())


# -- requests started without a task (UpstreamPool.start) ------------------------------------


class _Events(UpstreamExchange):
    """Records every event and ends the exchange as the gateway's does."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[bool, bool, bool]] = []  # (timed_out, head_done, complete)
        self.ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_event(self, timed_out: bool) -> None:
        self.events.append((timed_out, self.head_done, self.complete))
        error = self.error(timed_out)
        if error is not None:
            stale = self.stale()
            self.abandon()
            self.ended.set_result(("stale", error) if stale else ("error", error))
        elif self.complete:
            result = (self.status, self.body())
            self.finish()
            self.ended.set_result(result)


def test_start_needs_an_idle_connection_and_delivers_the_answer_as_events(run: Run) -> None:
    async def main() -> None:
        async with serve(ok_handler()) as server:
            pool = make_pool(server.url)
            assert pool.start("GET", "/a", [], _Events()) is False  # nothing idle yet
            assert server.requests == 0 and server.connections == 0
            await (await pool.request("GET", "/warm", [], None)).read()
            ex = _Events()
            assert pool.start("GET", "/b?x=1", [], ex) is True
            assert await asyncio.wait_for(ex.ended, 5) == (200, b"/b?x=1")
            assert ex.events[-1] == (False, True, True)
            # finish() gave the connection back: the next request reuses it
            ex2 = _Events()
            assert pool.start("GET", "/c", [], ex2) is True
            assert await asyncio.wait_for(ex2.ended, 5) == (200, b"/c")
            assert server.connections == 1
            # a head that would split (CR/LF) is refused without using the connection
            assert pool.start("GET", "/d\r\nX: y", [], _Events()) is False
            assert len(pool._idle) == 1
            await pool.aclose()

    run(main())


def test_a_started_request_past_its_read_timeout_gets_a_timeout_event(run: Run) -> None:
    async def main() -> None:
        async with serve(_answer_after([0, 10])) as server:
            pool = make_pool(server.url)
            await (await pool.request("GET", "/warm", [], None, read_timeout=5)).read()
            ex = _Events()
            start = time.monotonic()
            assert pool.start("GET", "/slow", [], ex, read_timeout=0.3)
            kind, error = await asyncio.wait_for(ex.ended, 5)
            assert kind == "error" and isinstance(error, UpstreamTimeout)
            assert error.stage == "response"
            assert 0.25 < time.monotonic() - start < 2
            assert ex.events == [(True, False, False)]
            assert pool._count == 0  # abandoned: the connection is closed and forgotten
            await pool.aclose()

    run(main())


def test_a_reused_connection_closed_unanswered_is_reported_stale(run: Run) -> None:
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is not None:
            writer.write(response(b"first"))
            await read_request(reader)  # the next one: dropped with the connection

    async def main() -> None:
        async with serve(one_answer) as server:
            pool = make_pool(server.url)
            await (await pool.request("GET", "/a", [], None)).read()
            ex = _Events()
            assert pool.start("GET", "/b", [], ex)
            kind, error = await asyncio.wait_for(ex.ended, 5)
            assert kind == "stale" and isinstance(error, UpstreamClosed)
            await pool.aclose()

    run(main())


def test_a_body_still_to_come_is_read_by_awaiting_after_the_head_event(run: Run) -> None:
    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"world")

    class HeadThenAwait(UpstreamExchange):
        def __init__(self) -> None:
            super().__init__()
            self.resp: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_event(self, timed_out: bool) -> None:
            if self.head_done and not self.resp.done():
                self.resp.set_result(self.response())

    async def main() -> None:
        async with serve(slow_body) as server:
            pool = make_pool(server.url)
            await (await pool.request("GET", "/warm", [], None)).read()
            ex = HeadThenAwait()
            assert pool.start("GET", "/b", [], ex)
            resp = await asyncio.wait_for(ex.resp, 5)
            assert resp.status == 200 and await resp.read() == b"helloworld"
            await resp.aclose()
            assert len(pool._idle) == 1  # whole and keep-alive: back in the pool
            await pool.aclose()

    run(main())
