"""Proxied requests served without a task (gateway.proxy_http.DirectForward).

An in-process gateway under its own server protocol, in front of the real Node upstreams
(and, for a connection the upstream closes as it is reused, a raw socket server). The
protocol counts the tasks it starts, so each test shows which way a request went.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gw_helpers import ThreadServer, Upstreams, read_responses
from uvicorn.protocols.http.flow_control import FlowControl

from gateway.accesslog import AccessLog
from gateway.app import Gateway
from gateway.config import load_config
from gateway.http11 import CoalescingCycle, GatewayHttpProtocol, ResponseNotes
from gateway.server import uvicorn_config

ROUTES = """
settings: {{backend_header: true, access_log: true}}
defaults: {{timeout: 10s, body_limit: 1MiB, sticky: none}}
upstreams:
  a: {{url: "{a}"}}
  raw: {{url: "http://127.0.0.1:{raw}"}}
routes:
  - {{name: echo, match: {{prefix: /echo}}, legacy: a}}
  - {{name: big, match: {{prefix: /big}}, legacy: a, body_limit: 10MiB}}
  - {{name: sse, match: {{prefix: /sse}}, legacy: a}}
  - {{name: slow, match: {{prefix: /slow}}, legacy: a, timeout: 400ms}}
  - {{name: slow-long, match: {{prefix: /slow/long}}, legacy: a, timeout: 30s}}
  - {{name: raw, match: {{prefix: /raw}}, legacy: raw}}
"""


class _Counted(GatewayHttpProtocol):
    tasks_started = 0
    send_buffer: int | None = None  # SO_SNDBUF of the connections accepted from now on

    def connection_made(self, transport: Any) -> None:
        if self.send_buffer is not None:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        super().connection_made(transport)

    def _spawn(self, cycle: Any, app: Any) -> None:
        type(self).tasks_started += 1
        super()._spawn(cycle, app)


class _Server(ThreadServer):
    def __init__(self, upstreams: Upstreams, raw_port: int, tmp_path: Path) -> None:
        path = tmp_path / "routes.yaml"
        path.write_text(ROUTES.format(a=upstreams.url("a"), raw=raw_port))
        self.log = io.StringIO()
        self.gateway = Gateway(load_config(str(path)), env={}, access_log=AccessLog(True, self.log))
        # the gateway's own server settings (uvicorn's proxy-headers middleware would hide
        # the gateway's http_start from the protocol), with the counting protocol
        super().__init__(uvicorn_config(self.gateway, http=_Counted, log_level="critical"))
        self.direct = 0  # requests written by UpstreamPool.start (a spy on the real pools)
        for pool in self.gateway.pools.values():
            real = pool.start

            def start(*args: Any, _real: Any = real, **kw: Any) -> bool:
                began: bool = _real(*args, **kw)
                self.direct += began
                return began

            pool.start = start  # type: ignore[method-assign]

    def tasks(self) -> int:
        return _Counted.tasks_started

    def exchange(self, path: str, conn: socket.socket | None = None) -> bytes:
        """One GET on ``conn`` (a new connection when None); the whole response."""
        c = conn or socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            answer: bytes = read_responses(c)
            return answer
        finally:
            if conn is None:
                c.close()

    def logged(self) -> list[dict[str, Any]]:
        loop = self.gateway._loop
        assert loop is not None
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (self.gateway.flush_records(), done.set()))
        done.wait(5)
        self.gateway.access_log.flush()
        return [json.loads(x) for x in self.log.getvalue().splitlines()]


class _RawUpstream:
    """Answers the first request on each connection keep-alive; a second request on the
    same connection gets the connection closed without an answer (an upstream that timed
    the idle connection out just as it was reused)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.answered += 1
            body = b'{"n":%d}' % self.answered
            c.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive"
                b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            c.recv(65536)  # the next request: dropped with the connection

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(upstreams: Upstreams, tmp_path: Path) -> Any:
    raw = _RawUpstream()
    s = _Server(upstreams, raw.port, tmp_path)
    s.raw = raw  # type: ignore[attr-defined]
    yield s
    s.stop()
    raw.close()


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _headers(data: bytes) -> dict[bytes, list[bytes]]:
    head = data.partition(b"\r\n\r\n")[0]
    out: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def test_a_plain_proxied_get_is_served_without_a_task_with_the_same_answer(server):
    tasks = server.tasks()
    first = server.exchange("/echo/a?x=1")  # no idle upstream connection yet: a task
    assert server.tasks() == tasks + 1
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        answers = [server.exchange(f"/echo/b?i={i}", c) for i in range(5)]
    assert server.tasks() == tasks + 1, "requests with an idle upstream connection made tasks"
    assert server.direct == 5
    for data in (first, *answers):
        assert _status(data) == 200
    # the same answer both ways: the same header names, one Date, the gateway's own headers
    a, b = _headers(first), _headers(answers[-1])
    assert sorted(a) == sorted(b)
    assert len(b[b"date"]) == 1 and b[b"x-gateway-backend"] == [b"legacy"]
    assert len(b[b"x-request-id"]) == 1
    seen = json.loads(answers[-1].partition(b"\r\n\r\n")[2])
    sent = dict((k.lower(), v) for k, v in seen["headers"])
    assert seen["url"] == "/echo/b?i=4" and seen["method"] == "GET"
    assert sent["x-request-id"] == b[b"x-request-id"][0].decode()
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["x-forwarded-proto"] == "http"
    assert "x-gateway-backend" not in sent
    logged = server.logged()
    assert [(x["route"], x["backend"], x["status"]) for x in logged] == [
        ("echo", "legacy", 200)
    ] * 6
    assert logged[-1]["rid"] == b[b"x-request-id"][0].decode()
    assert logged[-1]["bytes"] == len(answers[-1].partition(b"\r\n\r\n")[2])


def test_a_client_leaving_first_abandons_the_upstream_request_and_is_logged_499(server, upstreams):
    server.exchange("/echo/warm")
    tasks = server.tasks()
    c = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    c.sendall(b"GET /slow/long?ms=8000&tag=direct-gone HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)
    c.close()
    deadline = time.monotonic() + 5
    while not upstreams.side("/__aborted?tag=direct-gone")["aborted"]:
        assert time.monotonic() < deadline, "the upstream request was not abandoned"
        time.sleep(0.05)
    assert server.tasks() == tasks and server.direct == 1
    assert server.logged()[-1]["status"] == 499


def test_a_read_timeout_answers_504_and_counts_the_error(server):
    server.exchange("/echo/warm")
    tasks = server.tasks()
    t0 = time.monotonic()
    data = server.exchange("/slow?ms=3000")
    took = time.monotonic() - t0
    assert _status(data) == 504 and b"did not answer in time" in data
    assert 0.35 < took < 2.5
    assert server.direct == 1
    assert server.tasks() == tasks + 1  # the error answer is sent from a task
    metrics = server.gateway.metrics
    value = metrics.upstream_errors.labels("slow", "a", "response")._value.get()
    assert value == 1


def test_a_reused_connection_the_upstream_closed_is_sent_again_on_a_new_one(server):
    raw = server.raw
    assert _status(server.exchange("/raw/1")) == 200  # a task; its connection stays idle
    tasks = server.tasks()
    data = server.exchange("/raw/2")  # direct on the idle one: closed unanswered → again
    assert _status(data) == 200 and data.endswith(b'{"n":2}')
    assert raw.connections == 2
    assert server.direct == 1
    assert server.tasks() == tasks + 1  # the second attempt runs as a task
    assert [x["status"] for x in server.logged()] == [200, 200]


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/big?mib=1", lambda body: len(body) == 1024 * 1024),
        ("/sse?n=3&every=50", lambda body: body.count(b"data: ") == 3),
    ],
    ids=["over-64KiB", "server-sent-events"],
)
def test_an_answer_to_stream_is_handed_to_a_task_at_its_head(server, path, check):
    server.exchange("/echo/warm")
    tasks = server.tasks()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert _status(head) == 200
    if b"chunked" in head.lower():
        body = _dechunk(body)
    assert check(body)
    assert server.direct == 1
    assert server.tasks() == tasks + 1


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2 :]
    return out


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def hold(self, head: bytes) -> None:
        self.written.append(head)

    def is_closing(self) -> bool:
        return False


def test_respond_now_leaves_a_paused_transport_to_respond():
    transport = _Transport()
    flow = FlowControl(transport)  # type: ignore[arg-type]
    cycle = CoalescingCycle(
        scope={"method": "GET"}, transport=transport, flow=flow,  # type: ignore[arg-type]
        logger=None, access_logger=None, access_log=False,  # type: ignore[arg-type]
        default_headers=[], message_event=asyncio.Event(), expect_100_continue=False,
        keep_alive=True, on_response=lambda: None,
    )  # fmt: skip
    cycle.notes = ResponseNotes()
    headers = [(b"content-length", b"2")]
    flow.pause_writing()
    assert cycle.respond_now(200, headers, b"ok") is False
    assert transport.written == [] and not cycle.response_started
    flow.resume_writing()
    assert cycle.respond_now(200, headers, b"ok") is True
    assert transport.written[0].endswith(b"\r\n\r\nok") and cycle.response_complete


def test_pipelined_requests_each_get_their_answer_in_order(server):
    server.exchange("/echo/warm")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"".join(b"GET /echo/p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(4)))
        c.sendall(b"GET /echo/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    urls = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        n = int(_headers(head + b"\r\n\r\n")[b"content-length"][0])
        urls.append(json.loads(rest[:n])["url"])
        data = rest[n:]
    assert urls == ["/echo/p0", "/echo/p1", "/echo/p2", "/echo/p3", "/echo/last"]
    assert server.direct >= 4


def test_an_answer_for_a_client_not_reading_is_handed_to_a_task_that_waits_for_it(server):
    """A client that pipelines requests and reads nothing: once the gateway's write buffer
    for it is past the high-water mark (the transport paused), the next answer the upstream
    gives cannot be written at once, so the request goes on in a task (forward() waits for
    the drain). When the client reads, every answer is there, whole and in order."""
    server.exchange("/echo/warm")
    tasks, direct = server.tasks(), server.direct
    n = 40
    pad = "p" * 8000  # echoed back: ~8 KiB answers, ~320 KiB in all
    # A client on a slow link: small socket buffers at both ends (the kernel would
    # otherwise grow the gateway's to megabytes), so the answers pile up in the gateway's
    # transport past its high-water mark.
    _Counted.send_buffer = 4096
    try:
        with socket.socket() as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.settimeout(10)
            c.connect(("127.0.0.1", server.port))
            c.sendall(
                "".join(
                    f"GET /echo/n{i} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n" for i in range(n)
                ).encode()
            )
            # reads nothing until an answer has found the gateway's buffer for it full
            deadline = time.monotonic() + 10
            while server.tasks() == tasks and time.monotonic() < deadline:
                time.sleep(0.01)
            handed = server.tasks() - tasks
            answers = read_responses(c, n)
    finally:
        _Counted.send_buffer = None
    assert handed >= 1, "no answer was handed to a task while the client was not reading"
    assert server.direct == direct + n  # every request began without a task
    urls = [json.loads(a.partition(b"\r\n\r\n")[2])["url"] for a in answers]
    assert urls == [f"/echo/n{i}" for i in range(n)]
    assert all(_status(a) == 200 for a in answers)


def test_a_request_the_gateway_fails_to_prepare_gets_uvicorns_500(server):
    server.exchange("/echo/warm")

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a bug in the split")

    server.gateway.decide = broken
    data = server.exchange("/echo/x")
    assert _status(data) == 500
