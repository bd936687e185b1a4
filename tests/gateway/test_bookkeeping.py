"""Per-request bookkeeping done in batches (Gateway._done / flush_records) and the
server's response notes (gateway.http11.ResponseNotes) that replace the send wrapper.

The gateway here is the real ASGI app on a real event loop, called the way a server
calls it; the module is a small ASGI app; the last test runs it under uvicorn with the
gateway's own protocol on a real socket.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn
from gw_helpers import ThreadServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import modules
from gateway.accesslog import AccessLog
from gateway.app import RECORD_DELAY, Gateway
from gateway.config import load_config
from gateway.http11 import RESPONSE_NOTES, GatewayHttpProtocol, ResponseNotes

ROUTES = """
settings: {backend_header: true, access_log: true}
defaults: {timeout: 10s, body_limit: 1KiB, sticky: none}
upstreams:
  nowhere: {url: "http://127.0.0.1:9", pool_size: 1}
routes:
  - {name: mod, match: {prefix: /mod}, legacy: nowhere, module: bookkeeping, new_percent: 100}
"""

BODY = b'{"answer":42}'


def _module(ctx: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/mod/crash":
            raise RuntimeError("module bug")
        status = 201 if scope["path"] == "/mod/created" else 200
        headers = [(b"content-type", b"application/json"), (b"content-length", b"13")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    return app


modules.register("bookkeeping", _module)


def _config(tmp_path: Path) -> Any:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return load_config(str(path), known_modules=modules.names())


def _scope(path: str, extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"t")], "client": ("10.0.0.1", 5000),
        "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _series(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(gw.metrics.registry).decode()):
        for s in fam.samples:
            if s.name == "gateway_requests_total":
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_are_counted_in_batches_yet_every_reader_sees_them_at_once(tmp_path):
    log = io.StringIO()
    gw = Gateway(_config(tmp_path), env={}, access_log=AccessLog(True, log))

    async def run() -> None:
        await gw.startup()
        sent: list[dict[str, Any]] = []

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        for path in ("/mod/a", "/mod/created", "/mod/b"):
            await gw(_scope(path), _receive, send)
        # queued, not yet done: the flush is armed for RECORD_DELAY
        assert len(gw._records) == 3 and log.getvalue() == ""
        # a scrape flushes first
        key = ("gateway_requests_total", (("backend", "new"), ("method", "GET"),
               ("route", "mod"), ("status", "2xx")))  # fmt: skip
        assert _series(gw)[key] == 3
        assert gw._records == []
        # so does the guard's window, and the timer flushes the rest
        await gw(_scope("/mod/c"), _receive, send)
        assert gw.window.stats("mod", "new").requests == 4
        await gw(_scope("/mod/d"), _receive, send)
        await asyncio.sleep(RECORD_DELAY * 3)
        assert gw._records == []
        await gw.shutdown()

    t0 = time.time()
    asyncio.run(run())
    lines = [json.loads(x) for x in log.getvalue().splitlines()]
    assert [x["path"] for x in lines] == ["/mod/a", "/mod/created", "/mod/b", "/mod/c", "/mod/d"]
    assert [x["status"] for x in lines] == [200, 201, 200, 200, 200]
    assert all(x["bytes"] == len(BODY) and x["backend"] == "new" for x in lines)
    # ts is when each request ended, not when its batch was written
    assert all(t0 - 0.01 <= x["ts"] <= lines[-1]["ts"] for x in lines)
    assert lines[0]["ts"] < lines[2]["ts"] + 0.001 < lines[4]["ts"] + RECORD_DELAY


def test_with_the_servers_notes_the_module_send_is_not_wrapped(tmp_path):
    gw = Gateway(_config(tmp_path), env={}, access_log=AccessLog(False))
    seen: list[Any] = []

    async def server_send(msg: dict[str, Any]) -> None:
        seen.append(msg)

    async def run() -> None:
        await gw.startup()
        notes = ResponseNotes()
        # (the server fills the notes itself; here, as the test's server, by hand)
        scope = _scope("/mod/created", {RESPONSE_NOTES: notes})

        async def noting_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                notes.status = msg["status"]
            else:
                notes.body_bytes += len(msg.get("body", b""))
            await server_send(msg)

        await gw(scope, _receive, noting_send)
        lines = notes.extra_head.split(b"\r\n")
        assert [line.split(b": ")[0] for line in lines] == [
            b"x-request-id", b"x-gateway-backend", b"",
        ]  # fmt: skip
        assert lines[1] == b"x-gateway-backend: new"
        # the module's own start message went out as it was (the server adds the extras)
        assert seen[0]["headers"] == [(b"content-type", b"application/json"),
                                      (b"content-length", b"13")]  # fmt: skip
        gw.flush_records()
        assert gw.window.stats("mod", "new").requests == 1
        await gw.shutdown()

    asyncio.run(run())
    # without the notes (another server), the gateway adds them to the message itself
    seen.clear()
    gw2 = Gateway(_config(tmp_path), env={}, access_log=AccessLog(False))

    async def run2() -> None:
        await gw2.startup()
        await gw2(_scope("/mod/a"), _receive, server_send)
        await gw2.shutdown()

    asyncio.run(run2())
    names = [k for k, _ in seen[0]["headers"]]
    assert names[-2:] == [b"x-request-id", b"x-gateway-backend"]


class _Server(ThreadServer):
    def __init__(self, app: Any) -> None:
        super().__init__(
            uvicorn.Config(
                app, loop="uvloop", http=GatewayHttpProtocol, lifespan="on", log_level="critical"
            )
        )

    def get(self, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        return data


def test_on_the_gateways_protocol_extras_status_and_size_come_from_the_server(tmp_path):
    log = io.StringIO()
    gw = Gateway(_config(tmp_path), env={}, access_log=AccessLog(True, log))
    server = _Server(gw)
    try:
        ok = server.get("/mod/created")
        crash = server.get("/mod/crash")
    finally:
        server.stop()
    head, body = ok.split(b"\r\n\r\n", 1)
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 201 created" and body == BODY
    assert sum(x.startswith(b"x-request-id: ") for x in lines) == 1
    assert b"x-gateway-backend: new" in lines
    assert crash.startswith(b"HTTP/1.1 500 ") and crash.count(b"x-request-id: ") == 1
    logged = [json.loads(x) for x in log.getvalue().splitlines()]
    assert [(x["path"], x["status"], x["bytes"]) for x in logged][:1] == [
        ("/mod/created", 201, len(BODY))
    ]
    assert logged[1]["status"] == 500 and logged[1]["bytes"] > 0


def test_one_pass_over_the_headers_forwards_what_the_rules_say(tmp_path):
    gw = Gateway(_config(tmp_path), env={}, access_log=AccessLog(False))
    scope = _scope("/mod/a")
    scope["headers"] = [
        (b"host", b"front"), (b"x-request-id", b"first"), (b"x-request-id", b"second"),
        (gw.table.force_name, b"token-1"), (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-proto", b"https"), (b"keep-alive", b"5"), (b"x-app", b"kept"),
    ]  # fmt: skip
    out, rid, force = gw._scan_headers(scope)
    assert (rid, force) == (b"first", b"token-1")
    assert out == [(b"host", b"front"), (b"x-app", b"kept"),
                   (b"x-forwarded-for", b"1.1.1.1, 10.0.0.1"), (b"x-forwarded-proto", b"http"),
                   (b"x-forwarded-host", b"front")]  # fmt: skip
    # Connection names more hop-by-hop headers (here even Host and X-Forwarded-For), and
    # Transfer-Encoding voids Content-Length: the general rules, as before
    scope["headers"] = [
        (b"host", b"front"), (b"connection", b"x-secret, host, x-forwarded-for"),
        (b"x-secret", b"s"), (b"x-forwarded-for", b"1.1.1.1"), (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"), (b"x-app", b"kept"),
    ]  # fmt: skip
    out, rid, force = gw._scan_headers(scope)
    assert (rid, force) == (None, None)
    assert out == [(b"x-app", b"kept"), (b"x-forwarded-for", b"10.0.0.1"),
                   (b"x-forwarded-proto", b"http")]  # fmt: skip
