"""µs per request of the gateway's own Python work, without sockets (steadier than wrk).

Calls the ASGI apps directly on one event loop with a canned scope and no-op ``send``:

``bare``        the bench Starlette app alone (what the in-process path wraps)
``inproc``      the gateway routing to it at 100 %, metrics and access log on
``health``      the gateway's /health (request id + two sends, no routing)

and times the pieces of the gateway's per-request work one by one. ``inproc − bare`` is
what the gateway adds to a module call; compare it with the wrk figures of ``bench/run``.
The access log goes to /dev/null (the write is real, buffered as on a pipe or file).

Figures are CPU time (``time.process_time``), best of interleaved rounds, so other
processes on the machine inflate them less than wall-clock figures.

Usage: ``.venv/bin/python bench/hotpath.py [--n 10000] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modules  # noqa: E402
from bench.bench_module import create_app  # noqa: E402
from gateway.accesslog import AccessLog  # noqa: E402
from gateway.app import Gateway  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.routing import normalise_path  # noqa: E402

ROUTES = """
settings: {backend_header: true, access_log: true}
defaults: {timeout: 10s, body_limit: 2MiB, sticky: none}
upstreams:
  node: {url: "http://127.0.0.1:9", pool_size: 10}
routes:
  - {name: proxied, match: {path: /api/proxied}, legacy: node}
  - {name: inproc, match: {path: /api/inproc}, legacy: node, module: bench, new_percent: 100}
"""

HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
]


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": HEADERS, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080), "state": {},
    }  # fmt: skip


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(msg: Any) -> None:
    return None


async def per_call(app: Any, path: str, n: int) -> float:
    """CPU µs per call (``process_time``: time lost to other processes is not counted)."""
    sc = scope(path)
    t = time.process_time()
    for _ in range(n):
        await app(sc, receive, send)
    return (time.process_time() - t) / n * 1e6


def sync_per_call(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t) / n)
    return best * 1e6


async def main(n: int, rounds: int) -> None:
    modules.register("bench", create_app)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(ROUTES)
    try:
        config = load_config(f.name, known_modules=modules.names())
    finally:
        os.unlink(f.name)
    with open(os.devnull, "w") as devnull:
        gw = Gateway(config, env={}, access_log=AccessLog(True, devnull))
        await gw.startup()
        try:
            apps = {"bare": (create_app(), "/api/inproc"), "inproc": (gw, "/api/inproc"),
                    "health": (gw, "/health")}  # fmt: skip
            best = dict.fromkeys(apps, float("inf"))
            for _ in range(rounds):  # interleaved, best of: noise only ever adds time
                for name, (app, path) in apps.items():
                    best[name] = min(best[name], await per_call(app, path, n))
            bare, inproc, health = best["bare"], best["inproc"], best["health"]
            sc = scope("/api/inproc")
            route = gw.table.config.routes[1]
            pieces = {
                "request id (new)": lambda: gw._request_id(HEADERS),
                "normalise_path + match": lambda: gw.table.router.match(
                    normalise_path(b"/api/inproc"), "GET"
                ),
                "decide (100 %)": lambda: gw.decide(route, HEADERS, b"", {}, sc["client"]),
                "_forward_headers": lambda: gw._forward_headers(sc, b"0" * 32, frozenset()),
                "metrics.observe": lambda: gw.metrics.observe("inproc", "new", "GET", 200, 0.001),
                "access_log.write": lambda: gw.access_log.write(
                    b"0" * 32, "inproc", "new", "GET", "/api/inproc", 200, 0.001, 409
                ),
            }
            print(f"{'bare Starlette app':<28} {bare:7.2f} µs")
            print(f"{'gateway → module (100 %)':<28} {inproc:7.2f} µs   (+{inproc - bare:.2f})")
            print(f"{'gateway /health':<28} {health:7.2f} µs")
            for name, fn in pieces.items():
                print(f"  {name:<26} {sync_per_call(fn, n):7.2f} µs")
        finally:
            await gw.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import uvloop

    uvloop.run(main(args.n, args.rounds))
