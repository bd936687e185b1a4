"""Shadowing's cost to the client: primary p50/p99 with a route mirrored at 0 % and 100 %.

    .venv/bin/python bench/shadow.py [--requests 4000] [--concurrency 2] [--rounds 3]

Two real gateway processes in front of the same upstream (``tests/shadow/shadow_apps``),
one with ``shadow: {percent: 0}``, one with ``percent: 100`` (the module compared in
process). Rounds alternate between them so that drift hits both. The shadow side's work is
accounted apart: copies made (``/api/shadow`` counts) and each gateway process's CPU time.
PASS when p50 and p99 at 100 % are within 5 % of 0 % (a 0.1 ms floor absorbs timer noise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "shadow"))

from shadow_helpers import ADMIN_TOKEN, ShadowGateway, _free_port, routes_text  # noqa: E402

SHADOW = "{percent: %s, compare: {normalise: [timestamp], ignore: ['$.nonce']}}"


async def load(url: str, n: int, concurrency: int) -> list[float]:
    times: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False) as c:

        async def worker(k: int) -> None:
            for i in range(k, n, concurrency):
                t0 = time.perf_counter()
                r = await c.get(f"/api/items/{i % 100}")
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return times


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = _free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.shadow.shadow_apps:upstream", "--port",
         str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    time.sleep(1.5)
    work = tempfile.mkdtemp()
    env = {
        "CHATGW_EXTRA_MODULES": "shadowtest=tests.shadow.shadow_apps:create_module",
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    upstream = f"http://127.0.0.1:{port}"
    gws = {p: ShadowGateway(routes_text(upstream, SHADOW % p), env, work) for p in (0, 100)}
    try:
        procs = {p: psutil.Process(g.proc.pid) for p, g in gws.items()}
        for g in gws.values():  # warm up
            asyncio.run(load(g.url, 500, args.concurrency))
        times: dict[int, list[float]] = {0: [], 100: []}
        cpu = dict.fromkeys(gws, 0.0)
        for _ in range(args.rounds):
            for p, g in gws.items():
                c0 = sum(procs[p].cpu_times()[:2])
                times[p] += asyncio.run(load(g.url, args.requests, args.concurrency))
                cpu[p] += sum(procs[p].cpu_times()[:2]) - c0
        time.sleep(1)
        copies = sum(gws[100].counts().values())
        counts = gws[100].counts()
    finally:
        for g in gws.values():
            g.stop()
        up.terminate()
    n = args.requests * args.rounds
    rows = []
    ok = True
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        off, on = pct(times[0], q) * 1000, pct(times[100], q) * 1000
        within = on <= off * 1.05 + 0.1
        ok &= within
        rows.append(f"{name}: shadow 0 % {off:.2f} ms, 100 % {on:.2f} ms "
                    f"({(on / off - 1) * 100:+.1f} %) {'PASS' if within else 'MISS'}")  # fmt: skip
    print(f"{n} requests per side, concurrency {args.concurrency}, {args.rounds} rounds")
    print("\n".join(rows))
    print(
        f"mean: {statistics.mean(times[0]) * 1000:.2f} ms vs {statistics.mean(times[100]) * 1000:.2f} ms"
    )
    print(f"shadow side: {copies} copies {counts}; gateway CPU {cpu[0]:.2f} s (0 %) vs "
          f"{cpu[100]:.2f} s (100 %): {(cpu[100] - cpu[0]) / max(copies, 1) * 1e6:.0f} µs per copy")  # fmt: skip
    print("RESULT:", "PASS" if ok else "MISS", "(within 5 % of shadowing off)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
