"""gateway.accesslog: one JSON line per request on the gateway's stdout, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

from gw_helpers import make_token
from websockets.sync.client import connect

from gateway.accesslog import FLUSH_DELAY, MAX_PENDING, AccessLog


def _lines_for(gw, rids: set[str], timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in gw.access_lines() if line.get("rid") in rids]
        if {line["rid"] for line in lines} == rids or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_each_request_writes_one_json_line_with_its_fields(gw):
    rids = {f"log-{uuid.uuid4().hex}" for _ in range(5)}
    with gw.client() as c:
        for rid in sorted(rids):
            assert c.get("/echo/logged", headers={"X-Request-Id": rid}).status_code == 200
    lines = _lines_for(gw, rids)
    assert sorted(line["rid"] for line in lines) == sorted(rids)  # exactly one each
    line = lines[0]
    assert {"ts", "rid", "route", "backend", "method", "path", "status", "ms", "bytes"} <= set(line)
    assert (line["route"], line["backend"], line["method"]) == ("echo", "legacy", "GET")
    assert (line["path"], line["status"]) == ("/echo/logged", 200)
    assert line["bytes"] > 0
    assert line["ms"] >= 0


def test_module_and_gateway_answers_are_logged_with_their_backend(gw):
    new, missing = f"log-{uuid.uuid4().hex}", f"log-{uuid.uuid4().hex}"
    with gw.client() as c:
        c.get("/probe/logged", headers={"X-Request-Id": new})
        c.get("/not/routed", headers={"X-Request-Id": missing})
    by_rid = {line["rid"]: line for line in _lines_for(gw, {new, missing})}
    assert (by_rid[new]["route"], by_rid[new]["backend"], by_rid[new]["status"]) == (
        "probe",
        "new",
        200,
    )
    assert (by_rid[missing]["route"], by_rid[missing]["status"]) == ("-", 404)


def test_access_log_never_holds_authorization_cookies_or_query_tokens(gw):
    secret_jwt = make_token("log-user", nonce=uuid.uuid4().hex)
    cookie_secret = f"cookie-{uuid.uuid4().hex}"
    query_secret = f"qs-{uuid.uuid4().hex}"
    rid, ws_rid = f"log-{uuid.uuid4().hex}", f"log-{uuid.uuid4().hex}"
    with gw.client() as c:
        r = c.get(
            f"/echo/secret?token={query_secret}&x=1",
            headers={
                "Authorization": f"Bearer {secret_jwt}",
                "Cookie": f"sid={cookie_secret}",
                "X-Request-Id": rid,
            },
        )
    assert r.status_code == 200
    with connect(
        f"{gw.ws_url}/ws?token={query_secret}",
        proxy=None,
        additional_headers={"X-Request-Id": ws_rid, "Cookie": f"sid={cookie_secret}"},
    ) as ws:
        ws.send("x")
        ws.recv(timeout=5)
    lines = _lines_for(gw, {rid, ws_rid})
    assert len(lines) == 2
    out = gw.stdout()
    for secret in (secret_jwt, secret_jwt.split(".")[1], cookie_secret, query_secret):
        assert secret not in out
    assert {line["path"] for line in lines} == {"/echo/secret", "/ws"}


class _CountingStream(io.StringIO):
    """A write-through stream (as stdout is with PYTHONUNBUFFERED=1): each write or flush
    here is a write() syscall on a real stdout."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_are_flushed_within_the_delay_but_not_once_per_request() -> None:
    stream = _CountingStream()
    log = AccessLog(True, stream)

    async def traffic() -> tuple[int, int]:
        for i in range(50):  # one request per event-loop turn, as under load
            log.write(b"r%d" % i, "route", "new", "GET", "/p", 200, 0.001, 10)
            await asyncio.sleep(0)
        during = stream.writes + stream.flushes
        await asyncio.sleep(FLUSH_DELAY * 3)
        return during, stream.writes

    during, writes = asyncio.run(traffic())
    assert during == 0  # not a write() per request, nor per loop turn
    assert writes == 1  # and prompt: all 50 lines in one write within the delay
    assert [json.loads(x)["rid"] for x in stream.getvalue().splitlines()] == [
        f"r{i}" for i in range(50)
    ]
    log.write(b"last", "route", "new", "GET", "/p", 200, 0.001, 10)  # no loop: written at once
    assert stream.writes == 2 and stream.getvalue().endswith('"bytes":10}\n')


def test_a_burst_beyond_max_pending_is_written_without_waiting() -> None:
    stream = _CountingStream()
    log = AccessLog(True, stream)

    async def burst() -> int:
        for i in range(MAX_PENDING // 100 + 10):  # lines are > 100 bytes
            log.write(b"r%d" % i, "route", "new", "GET", "/p", 200, 0.001, 10)
        return stream.writes

    assert asyncio.run(burst()) >= 1


def test_every_field_is_valid_json_whatever_the_client_sent() -> None:
    stream = io.StringIO()
    log = AccessLog(True, stream)
    log.write(b'id"with\\quotes', 'route"x', "new", "GET", '/p"\u00e9\ud800\n', 200, 0.0012345, 10,
              ts=1795490000.1234)  # fmt: skip
    log.write(b"0123abcd", "r", "legacy", "BREW", "/p", 404, 0.5, 0)
    first, second = (json.loads(x) for x in stream.getvalue().splitlines())
    assert first == {"ts": 1795490000.123, "rid": 'id"with\\quotes', "route": 'route"x',
                     "backend": "new", "method": "GET", "path": '/p"\u00e9\\ud800\n',
                     "status": 200, "ms": 1.234, "bytes": 10}  # fmt: skip
    assert (second["rid"], second["method"], second["ms"]) == ("0123abcd", "BREW", 500.0)
    assert abs(second["ts"] - time.time()) < 5
