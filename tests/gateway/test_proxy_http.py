"""gateway.proxy_http end to end: a gateway subprocess in front of real Node upstreams.

Streaming (memory-bounded both ways, SSE flushed per event), header rules, failure
mapping (502/504, aborted bodies, cancelled upstream requests) and the body limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import threading
import time
import uuid
import weakref

import httpx
import pytest
from gw_helpers import MiB, RssSampler, header_list, raw_http

from gateway import proxy_http

PATTERN = bytes(i % 251 for i in range(65536))


def _pattern_sha256(total: int) -> str:
    h = hashlib.sha256()
    for _ in range(total // len(PATTERN)):
        h.update(PATTERN)
    h.update(PATTERN[: total % len(PATTERN)])
    return h.hexdigest()


def _echo(gw, path: str = "/echo/x", **kw):
    with gw.client() as c:
        r = c.get(path, **kw)
    assert r.status_code == 200, r.text
    return r, r.json()


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_50mib_response_streams_through_with_bounded_gateway_memory(gw, chunked):
    total = 50 * MiB
    with gw.client() as c:
        c.get("/big", params={"mib": 1}).raise_for_status()  # warm up the code path
        h = hashlib.sha256()
        got = 0
        with RssSampler(gw.pid) as rss:
            params = {"mib": 50, **({"chunked": 1} if chunked else {})}
            with c.stream("GET", "/big", params=params) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw(256 * 1024):
                    got += len(chunk)
                    h.update(chunk)
    print(f"\n50 MiB download ({'chunked' if chunked else 'content-length'}): gateway RSS "
          f"grew {rss.growth / MiB:.1f} MiB over {rss.samples} samples")  # fmt: skip
    assert got == total
    assert h.hexdigest() == _pattern_sha256(total)
    assert rss.samples > 10
    assert rss.growth < 20 * MiB


def test_50mib_chunked_upload_streams_through_with_bounded_memory_and_intact_body(gw):
    total = 50 * MiB
    block = bytes(range(256)) * 256  # 64 KiB
    expected = hashlib.sha256(block * (total // len(block))).hexdigest()

    def body():
        for _ in range(total // len(block)):
            yield block

    with gw.client() as c:
        c.post("/upload", content=block).raise_for_status()  # warm up
        with RssSampler(gw.pid) as rss:
            r = c.post("/upload", content=body())
    print(f"\n50 MiB chunked upload: gateway RSS grew {rss.growth / MiB:.1f} MiB")
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["bytes"] == total
    assert seen["sha256"] == expected
    assert seen["te"] == "chunked"
    assert rss.growth < 20 * MiB


def test_sse_first_event_reaches_client_while_upstream_still_sending(gw):
    # The upstream sends 5 events 200 ms apart, each stamped with its send time (ms).
    arrivals: list[float] = []  # wall clock, same machine as the upstream
    sent: list[float] = []
    with gw.client() as c, c.stream("GET", "/sse", params={"n": 5, "every": 200}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.time())
                sent.append(json.loads(line[5:])["t"] / 1000)
    assert len(arrivals) == 5
    print(
        f"\nSSE delivery delays (ms): {[round((a - s) * 1000, 1) for a, s in zip(arrivals, sent, strict=True)]}"
    )
    assert arrivals[0] < sent[-1]  # the first event was out before the upstream finished
    assert arrivals[-1] - arrivals[0] > 0.5  # not bunched at the end


def test_small_non_2xx_response_is_passed_through_byte_for_byte(gw, upstreams):
    with gw.client() as c:
        r = c.get("/conflict")
    direct = httpx.get(upstreams.url("a") + "/conflict", trust_env=False)
    assert r.status_code == 409
    assert len(r.content) == 409
    assert r.content == direct.content
    assert r.headers["content-length"] == "409"


# --------------------------------------------------------------------------- headers


def test_hop_by_hop_request_headers_are_not_forwarded(gw):
    _, echo = _echo(
        gw,
        headers={
            "Connection": "keep-alive, X-Named-Hop",
            "X-Named-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "X-End-To-End": "kept",
        },
    )
    names = {k for k, _ in echo["headers"]}
    for hop in ("x-named-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert hop not in names, f"{hop} reached the upstream"
    assert header_list(echo, "connection") in ([], ["keep-alive"])
    assert header_list(echo, "x-end-to-end") == ["kept"]


def test_hop_by_hop_response_headers_are_not_returned(gw):
    status, headers, _ = raw_http(
        gw.port, b"GET /hop HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    names = [k for k, _ in headers]
    assert "x-hop-named" not in names
    assert "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert ("x-end-to-end", "kept") in headers
    assert names.count("transfer-encoding") <= 1 and names.count("content-length") <= 1


@pytest.mark.parametrize("path", ["/conflict", "/hop"], ids=["plain", "connection-named"])
def test_proxied_response_has_one_date_header(gw, path):
    # Node sends its Date; the gateway's server adds its own to every answer.
    status, headers, _ = raw_http(
        gw.port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    assert status in (200, 409)
    assert [k for k, _ in headers].count("date") == 1


def test_request_with_both_content_length_and_chunked_never_reaches_upstream_with_both(
    gw, upstreams
):
    marker = uuid.uuid4().hex
    req = (
        f"POST /echo/{marker} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n"
    ).encode()
    status, _, body = raw_http(gw.port, req)
    if status == 200:  # accepted: the chunked framing must win, Content-Length dropped
        echo = httpx.Response(200, content=body).json() if body.startswith(b"{") else None
        assert echo is not None
        assert header_list(echo, "content-length") == []
        assert echo["body_len"] == 5
    else:  # refused by the gateway's HTTP parser, before any routing
        assert status == 400
        assert not any(marker in u for u in upstreams.seen())


def test_response_with_content_length_and_chunked_is_not_relayed_with_both(gw, start_gateway, raw_upstream):  # fmt: skip
    port, _ = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    g = start_gateway({
        "upstreams": {"raw": {"url": f"http://127.0.0.1:{port}"}},
        "routes": [{"name": "raw", "match": {"prefix": "/"}, "legacy": "raw"}],
    })  # fmt: skip
    status, headers, body = raw_http(
        g.port, b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    names = [k for k, _ in headers]
    if status == 200:
        assert "content-length" not in names
        assert b"hello" in body and body.endswith(b"0\r\n\r\n")
    else:  # the upstream client refused the ambiguous framing
        assert status == 502


def test_x_forwarded_for_is_appended_to_the_client_value(gw):
    _, echo = _echo(gw, headers={"X-Forwarded-For": "203.0.113.7"})
    assert header_list(echo, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]


def test_x_forwarded_proto_and_host_are_set_by_the_gateway_not_the_client(gw):
    _, echo = _echo(
        gw,
        headers={
            "Host": "chat.example.test",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
        },
    )
    assert header_list(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert header_list(echo, "x-forwarded-proto") == ["http"]
    assert header_list(echo, "x-forwarded-host") == ["chat.example.test"]


def test_host_header_is_passed_through_unchanged(gw):
    _, echo = _echo(gw, headers={"Host": "chat.example.test:8443"})
    assert header_list(echo, "host") == ["chat.example.test:8443"]


def test_request_id_absent_is_generated_and_same_for_upstream_and_client(gw):
    r, echo = _echo(gw)
    rid = r.headers["x-request-id"]
    assert len(rid) >= 16
    assert header_list(echo, "x-request-id") == [rid]
    r2, _ = _echo(gw)
    assert r2.headers["x-request-id"] != rid


def test_request_id_given_is_kept_end_to_end(gw):
    r, echo = _echo(gw, headers={"X-Request-Id": "client-chosen-42"})
    assert r.headers["x-request-id"] == "client-chosen-42"
    assert header_list(echo, "x-request-id") == ["client-chosen-42"]


def test_request_id_unprintable_is_replaced(gw):
    r, echo = _echo(gw, headers={"X-Request-Id": "has space"})
    assert r.headers["x-request-id"] != "has space"
    assert header_list(echo, "x-request-id") == [r.headers["x-request-id"]]


def test_query_string_is_forwarded_raw(gw):
    with gw.client() as c:
        r = c.get("/echo/q?a=1&b=%20x&a=2&empty=")
    assert r.json()["url"] == "/echo/q?a=1&b=%20x&a=2&empty="


def test_upstream_redirect_is_returned_not_followed(gw, upstreams):
    before = upstreams.seen().count("/redirect-target")
    with gw.client() as c:
        r = c.get("/redirect")
    assert r.status_code == 302
    assert r.headers["location"] == "/redirect-target"
    assert upstreams.seen().count("/redirect-target") == before


def test_upstream_set_cookie_is_not_replayed_to_another_client(gw):
    with gw.client() as first:
        r = first.get("/cookie")
        assert "sid=upstream-secret" in r.headers["set-cookie"]
    with gw.client() as second:
        _, echo = _echo(gw, "/echo/after-cookie")
        r2 = second.get("/echo/after-cookie-2")
    assert header_list(echo, "cookie") == []
    assert header_list(r2.json(), "cookie") == []


def test_http_proxy_env_of_the_gateway_process_is_ignored(gw):
    # `gw` runs with HTTP_PROXY, HTTPS_PROXY and ALL_PROXY pointing at a dead port.
    with open(f"/proc/{gw.pid}/environ", "rb") as fh:
        env = fh.read().split(b"\0")
    assert any(e.startswith(b"HTTP_PROXY=") for e in env)
    _, echo = _echo(gw)
    assert echo["upstream"] == "a"
    assert echo["url"] == "/echo/x"  # origin form: not a proxy's absolute URI


# --------------------------------------------------------------------------- failures


def test_upstream_refused_answers_502_bad_gateway_within_100ms(gw):
    timings = []
    with gw.client() as c:
        c.get("/echo/warm").raise_for_status()
        for _ in range(5):
            t0 = time.perf_counter()
            r = c.get("/refused/x")
            timings.append(time.perf_counter() - t0)
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "bad_gateway"
            assert r.headers["content-type"].startswith("application/json")
    print(f"\n502 on refused upstream: {[round(t * 1000, 1) for t in timings]} ms")
    assert statistics.median(timings) < 0.100


def test_upstream_slower_than_route_timeout_answers_504_after_the_timeout(gw):
    with gw.client() as c:
        t0 = time.perf_counter()
        r = c.get("/slow", params={"ms": 4000})
        elapsed = time.perf_counter() - t0
    print(f"\n504 after {elapsed:.3f} s (route timeout 1 s)")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "gateway_timeout"
    assert 0.95 <= elapsed < 3.0


def test_upstream_within_route_timeout_is_not_cut(gw):
    with gw.client() as c:
        r = c.get("/slow", params={"ms": 500})
    assert r.status_code == 200
    assert r.json()["slow"] is True


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upstream_breaking_mid_body_gives_client_a_broken_response(gw, framing):
    params = {"cl": 1} if framing == "content-length" else {}
    got = 0
    with (
        gw.client() as c,
        pytest.raises(httpx.RemoteProtocolError),
        c.stream("GET", "/break", params=params) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_raw():
            got += len(chunk)
    assert got == 10000


def test_client_disconnect_during_slow_answer_cancels_upstream_request(gw, upstreams):
    tag = uuid.uuid4().hex
    with gw.client(timeout=httpx.Timeout(10, read=0.5)) as c, pytest.raises(httpx.ReadTimeout):
        c.get("/slow/long", params={"ms": 8000, "tag": tag})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if upstreams.side(f"/__aborted?tag={tag}")["aborted"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the upstream request was not cancelled when the client went away")


def test_clients_leaving_one_after_another_each_cancel_their_upstream_request(gw, upstreams):
    # Watches armed at different times share one timer per loop: each must still start.
    tags = [uuid.uuid4().hex for _ in range(3)]

    def leave_after(tag: str, seconds: float) -> None:
        with (
            gw.client(timeout=httpx.Timeout(10, read=seconds)) as c,
            contextlib.suppress(httpx.ReadTimeout),
        ):
            c.get("/slow/long", params={"ms": 8000, "tag": tag})

    threads = [
        threading.Thread(target=leave_after, args=(tag, 0.3 + 0.3 * i))
        for i, tag in enumerate(tags)
    ]
    for t in threads:
        t.start()
        time.sleep(0.02)  # within 50 ms of each other: the timer must be moved on
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    left = set(tags)
    while left and time.monotonic() < deadline:
        left = {t for t in left if not upstreams.side(f"/__aborted?tag={t}")["aborted"]}
        time.sleep(0.05)
    assert not left, "an upstream request went on after its client left"


def test_a_finished_request_is_not_kept_alive_by_its_queued_watch():
    # A watch waits in its loop's queue up to 50 ms after its request ended; holding the
    # request's objects (the cycle behind ``receive``, the task) that long cost ~3 µs per
    # request at c=50 (bench/README.md).
    class Cycle:
        async def receive(self):
            return {"type": "http.disconnect"}

    async def main():
        cycle = Cycle()
        watch = proxy_http._Watch(cycle.receive, asyncio.get_running_loop())
        watch.arm()
        gone = weakref.ref(cycle)
        del cycle
        watch.finish()
        queue = proxy_http._WatchQueue.of(asyncio.get_running_loop()).queue
        assert any(w is watch for _, w in queue)  # still queued...
        assert gone() is None  # ...but the request is free

    asyncio.run(main())


def test_content_length_above_body_limit_answers_413_without_reaching_upstream(gw, upstreams):
    marker = uuid.uuid4().hex
    with gw.client() as c:
        r = c.post(f"/limited/{marker}", content=b"x" * 2000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert not any(marker in u for u in upstreams.seen())


def test_chunked_body_exceeding_body_limit_answers_413(gw):
    def body():
        for _ in range(8):
            yield b"y" * 512

    with gw.client() as c:
        r = c.post("/limited/chunked", content=body())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_body_at_the_limit_is_forwarded(gw):
    with gw.client() as c:
        r = c.post("/limited/ok", content=b"z" * 1024)
    assert r.status_code == 200
    assert r.json()["body_len"] == 1024
