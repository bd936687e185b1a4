"""Choose the proxy's upstream client by measurement: gateway.upstream vs aiohttp vs httpx.

Starts a Node upstream (``node -e``, keep-alive, 409 bytes of JSON) on an ephemeral port,
then measures, in one run:

1. each client alone, in this process on uvloop: N requests from 50 concurrent workers;
   requests/s and CPU µs per request (``time.process_time``);
2. a tiny raw-ASGI proxy per client on uvicorn (uvloop, httptools, one worker, no access
   log) loaded with ``wrk -t2 -c50 -d<duration>s``: requests/s and the proxy process's CPU
   µs per request (psutil ``cpu_times`` before/after). Skipped when ``wrk`` is missing.

Usage::

    .venv/bin/python bench/upstream_client.py [--requests 20000] [--duration 5]

Absolute numbers move between runs on shared machines; compare CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NODE_UPSTREAM = r"""
const http = require('http');
const items = [];
for (let i = 0; i < 4; i++) items.push({id: 1000 + i, room: 'general', user: 'u' + i,
  text: 'hello from the legacy chat service', ts: 1700000000 + i});
const skeleton = JSON.stringify({ok: true, items: items.slice(0, 3), pad: ''});
const body = Buffer.from(JSON.stringify(
  {ok: true, items: items.slice(0, 3), pad: '.'.repeat(409 - skeleton.length)}));
const s = http.createServer((q, r) => {
  q.resume();
  q.on('end', () => {
    r.writeHead(200, {'content-type': 'application/json', 'content-length': body.length});
    r.end(body);
  });
});
s.keepAliveTimeout = 60000;
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
"""

CLIENTS = ("upstream", "upstream-stream", "aiohttp", "httpx")
# RFC 9110 §7.6.1: connection-specific fields are not forwarded.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade")
)  # fmt: skip

Sender = Callable[[], Awaitable[bytes]]


# -- clients --------------------------------------------------------------------------------


async def make_client(name: str, url: str) -> tuple[Any, Callable[[bytes, list], Awaitable]]:
    """A client and ``fetch(target, headers) -> (status, headers, body)`` for it."""
    if name.startswith("upstream"):
        from gateway.upstream import UpstreamPool

        pool = UpstreamPool(url, connect_timeout=5, read_timeout=30, max_connections=100)

        async def fetch_upstream(target: bytes, headers: list) -> tuple[int, list, bytes]:
            resp = await pool.request("GET", target, headers, None)
            return resp.status, resp.headers, await resp.read()

        return pool, fetch_upstream
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )

        async def fetch_aiohttp(target: bytes, headers: list) -> tuple[int, list, bytes]:
            hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            async with session.get(url + target.decode(), headers=hdrs) as resp:
                return resp.status, list(resp.raw_headers), await resp.read()

        return session, fetch_aiohttp
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        trust_env=False,
        follow_redirects=False,
    )

    async def fetch_httpx(target: bytes, headers: list) -> tuple[int, list, bytes]:
        resp = await client.get(url + target.decode(), headers=headers)
        return resp.status_code, resp.headers.raw, resp.content

    return client, fetch_httpx


async def close_client(client: Any) -> None:
    await (client.aclose() if hasattr(client, "aclose") else client.close())


async def measure_client(name: str, url: str, total: int, concurrency: int) -> tuple[float, float]:
    client, fetch = await make_client(name, url)
    headers = [(b"accept", b"application/json"), (b"user-agent", b"bench")]

    async def worker(n: int) -> None:
        for _ in range(n):
            status, _, body = await fetch(b"/api/messages?room=general", headers)
            assert status == 200 and len(body) == 409, (status, len(body))

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm the pool
    per = total // concurrency
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await close_client(client)
    n = per * concurrency
    return n / wall, cpu / n * 1e6


# -- proxies --------------------------------------------------------------------------------


def proxy_app(name: str, url: str) -> Callable[..., Awaitable[None]]:
    """A raw-ASGI catch-all proxy buffering the (small) body, or streaming it."""
    state: dict[str, Any] = {}
    streaming = name == "upstream-stream"

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["client"], state["fetch"] = await make_client(name, url)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await close_client(state["client"])
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        if streaming:
            resp = await state["client"].request(scope["method"], target, headers, None)
            out = [(k, v) for k, v in resp.headers if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        status, raw, body = await state["fetch"](target, headers)
        out = [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_proxy(name: str, url: str, fd: int) -> None:
    import uvicorn

    # Not uvicorn's ``fd=``: it wraps the descriptor as AF_UNIX, so uvloop skips
    # TCP_NODELAY and Nagle + delayed ACKs add ~40 ms per response (measured: 22 req/s at
    # one connection). ``socket.socket(fileno=)`` detects the real family.
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(
        proxy_app(name, url), loop="uvloop", http="httptools", workers=1,
        access_log=False, log_level="warning", lifespan="on",
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


def measure_proxy(name: str, url: str, duration: int) -> tuple[float, float]:
    import psutil

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    cmd = [sys.executable, __file__, "--serve-proxy", name, "--upstream", url,
           "--fd", str(sock.fileno())]  # fmt: skip
    proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()])
    sock.close()
    try:
        target = f"http://127.0.0.1:{port}/api/messages?room=general"
        deadline = time.monotonic() + 10
        while True:  # wait until the lifespan is done and it answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if c.recv(12).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy {name} did not start")
            time.sleep(0.1)
        wrk = ["wrk", "-t2", "-c50"]
        subprocess.run([*wrk, "-d1s", target], check=True, capture_output=True)  # warm up
        ps = psutil.Process(proc.pid)
        before = ps.cpu_times()
        out = subprocess.run(
            [*wrk, f"-d{duration}s", target], check=True, capture_output=True, text=True
        ).stdout
        after = ps.cpu_times()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if non2xx:
            raise RuntimeError(f"proxy {name}: {non2xx.group(1)} error responses")
        cpu = (after.user - before.user) + (after.system - before.system)
        return rps, cpu / total * 1e6
    finally:
        proc.terminate()
        proc.wait(10)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--httpx-requests", type=int, default=4000, help="httpx is ~10x slower")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--serve-proxy", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(args.serve_proxy, args.upstream, args.fd)
        return
    if shutil.which("node") is None:
        sys.exit("node is not on PATH")
    import uvloop

    node = subprocess.Popen(["node", "-e", NODE_UPSTREAM], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        url = f"http://127.0.0.1:{int(node.stdout.readline())}"
        print(f"Node upstream {url}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        print(f"\nclient alone, 50 concurrent workers (uvloop), {args.requests} requests")
        print(f"{'client':<16} {'req/s':>9} {'CPU µs/req':>11}")
        for name in ("upstream", "aiohttp", "httpx"):
            total = args.httpx_requests if name == "httpx" else args.requests
            rps, us = uvloop.run(measure_client(name, url, total, 50))
            print(f"{name:<16} {rps:>9.0f} {us:>11.1f}", flush=True)
        if args.skip_proxy:
            return
        if shutil.which("wrk") is None:
            print("\nwrk is not installed: proxy comparison skipped (apt-get install -y wrk)")
            return
        print(f"\nraw-ASGI proxy on uvicorn (uvloop, httptools, 1 worker), "
              f"wrk -t2 -c50 -d{args.duration}s")  # fmt: skip
        print(f"{'proxy client':<16} {'req/s':>9} {'proxy CPU µs/req':>17}")
        for name in CLIENTS:
            rps, us = measure_proxy(name, url, args.duration)
            print(f"{name:<16} {rps:>9.0f} {us:>17.1f}", flush=True)
    finally:
        node.kill()
        node.wait()


if __name__ == "__main__":
    main()
