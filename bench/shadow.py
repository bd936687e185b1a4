"""Shadowing's cost to the client: primary p50/p99 with a route mirrored at 0 % and 100 %.

    .venv/bin/python bench/shadow.py [--quick] [--requests 1500] [--concurrency 2] [--rounds 10]
                                     [--no-probe] [--pin] [--paced 0.25 [--connections 8]]

Target (issue 2): *shadow at 100 % on a route: primary p50 and p99 within 5 % of shadow
off; the shadow side's CPU accounted separately.*

Method. Four real gateway processes (``python -m gateway.cli serve``, as the shadow tests
start them) in front of the same upstream (``tests/shadow/shadow_apps``: the "legacy"
service under uvicorn, and the same app as the in-process module ``shadowtest``): one with
``shadow: {percent: 0}`` (off: the route is configured for shadowing but no request is
mirrored), a second one like it (the *control*: how far two identical gateways differ in
the same rounds, the noise floor of every comparison here), one at ``percent: 100`` with
the default ``settings.shadow.isolation: loop`` (the copies in the serving loop) and one at
100 % with ``isolation: process`` (the copies in a worker process in the idle scheduling
class, the default ``nice: idle``; ``BENCH_SHADOW_NICE=10`` for a nice value instead).
Judged: ``process``, the isolation the README recommends for shadowing a route at 100 %;
``loop`` is information. Every GET is copied to the module and compared. The client is
an httpx AsyncClient at ``--concurrency`` (2) keep-alive connections,
``GET /api/items/{i}``; each response is checked (200). After a
warm-up (500 requests each), ``--rounds`` rounds alternate between the gateways so that
drift hits all, each round starting with the next gateway (none always follows the same
one); each round is ``--requests`` requests per gateway. Judged: the median over the
rounds of each round's p50 and p99 (a round that met a hiccup of the machine moves it
less than it moves a quantile of all rounds pooled, which is printed too). PASS when p50
and p99 of the judged one are at most 5 % above 0 % (plus a 0.1 ms floor that absorbs
timer noise at sub-millisecond latencies). The control's difference in the same
statistic says what a difference of that size is worth on this machine.

The shadow side's CPU, accounted apart:

0. **Isolation process**: the worker process's own CPU, which the gateway exports
   (``gateway_shadow_worker_cpu_seconds_total``), per copy; and the serving process's CPU
   per request minus the 0 % gateway's: the tap and the hand-off.
1. **Isolation loop, measured in the shadow workers.** The loop gateway (only that one: the
   probe's clock reads would count in the worker process's CPU per copy) loads the module
   through this file (``CHATGW_EXTRA_MODULES=shadowtest=bench.shadow:create_module``,
   which returns the test module unchanged) and that import wraps ``Mirror._handle`` (the shadow
   worker's per-copy coroutine: the module call, the comparison, the counting) in an
   awaitable that reads the loop thread's CPU clock (``time.thread_time``) around every
   step the coroutine runs. Steps of other tasks interleaved between them are not
   counted, so this is the CPU of the shadow work itself, exported on the gateway's own
   ``/metrics`` as ``bench_shadow_worker_cpu_seconds_total`` /
   ``bench_shadow_worker_copies_total``. Not included: the event loop's scheduling of
   those steps, and the primary-path part (the ``Tap`` that keeps the request and the
   answer, ``submit``). The wrapper's own cost (two clock reads per step) is included.
2. **Marginal, by difference.** Each gateway process's CPU (psutil user + system) over
   its measured rounds, per primary request: at 100 % minus at 0 % is everything
   shadowing costs the process (hot-path tap + queue + workers + loop overhead). Before
   the 100 % gateway's CPU is read after a round, the bench waits until every copy of
   that round has been counted (``/api/shadow``), so no copy's work spills out of its
   window. The difference minus (1) estimates the primary-path and scheduling part.

Output: a table, and ``bench/results/shadow.json`` (``shadow_pinned.json`` with ``--pin``):
``{"name": "shadow", "rows":
[{"figure", "value", "unit", "reference", "ref_value", "target", "pass"}], "meta": {...}}``.
``--pin``: the gateways (with their shadow worker processes) on CPU 1, the client and
the upstream on CPU 0, as when the gateway has a core of its own: the copies then compete
only with the primary they copy, and the scheduling class decides between the two processes.
``--paced FRACTION``: open loop instead, on shared cores: a raw-socket client (a few µs per
request, where httpx takes hundreds) sends a request every 1/rate s whatever the answers
do, on up to ``--connections`` keep-alive connections, at FRACTION of the rate the same
client reaches in a closed loop at ``--concurrency`` on the 0 % gateway in this run (a
gateway with headroom, as one is run); ``shadow_paced.json``.
``--quick``: 500 requests × 3 rounds (smoke test); ``--no-probe``: the module loaded
directly, without the CPU clock (to check that the clock does not move the latencies: it
does not, within this box's run-to-run noise). Exit status 1 on MISS. Every process
started here is stopped on exit, on error, on SIGTERM/SIGHUP and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Generator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "shadow"))

from bench.common import row, run_meta  # noqa: E402

SHADOW = "{percent: %s, compare: {normalise: [timestamp], ignore: ['$.nonce']}}"
WARMUP = 500
CALIBRATE = 2000  # --paced: closed-loop requests on the 0 % gateway that set the rate
CPU_METRIC = "bench_shadow_worker_cpu_seconds_total"
WORKER_CPU_METRIC = "gateway_shadow_worker_cpu_seconds_total"
# the gateways, each with the route at (percent, isolation); their rounds alternate
# "control" is a second gateway at 0 %: how far two identical gateways differ in the
# same rounds (the noise floor of the comparison)
VARIANTS = {"off": (0, "loop"), "loop": (100, "loop"), "process": (100, "process"),
            "control": (0, "loop")}  # fmt: skip
LABELS = {"off": "shadow 0 %", "process": "shadow 100 % (isolation process)",
          "loop": "shadow 100 % (isolation loop)",
          "control": "shadow 0 % (control: a second such gateway)"}  # fmt: skip
COPIES_METRIC = "bench_shadow_worker_copies_total"


# -- in the gateway process: the module, and the shadow workers' CPU clock ------------------


class _Timed:
    """Await ``coro``, adding the thread CPU time of each of its steps to ``box[0]``."""

    __slots__ = ("box", "coro")

    def __init__(self, coro: Any, box: list[float]) -> None:
        self.coro = coro
        self.box = box

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.coro.__await__()
        value: Any = None
        exc: BaseException | None = None
        while True:
            t0 = time.thread_time()
            try:
                step = it.throw(exc) if exc is not None else it.send(value)
            except StopIteration as stop:
                self.box[0] += time.thread_time() - t0
                return stop.value
            except BaseException:
                self.box[0] += time.thread_time() - t0
                raise
            self.box[0] += time.thread_time() - t0
            try:
                value, exc = (yield step), None
            except GeneratorExit:
                it.close()
                raise
            except BaseException as e:  # cancellation and the like: into the coroutine
                value, exc = None, e


def _instrument() -> None:
    """Wrap ``Mirror._handle`` so that its CPU is counted on the gateway's registry."""
    from prometheus_client import Counter

    from gateway.shadow import mirror

    if getattr(mirror.Mirror._handle, "_bench_timed", False):
        return
    handle = mirror.Mirror._handle
    counters: dict[int, tuple[Any, Any]] = {}

    async def timed_handle(self: Any, tap: Any) -> None:
        pair = counters.get(id(self))
        if pair is None:
            reg = self.gateway.metrics.registry
            pair = counters[id(self)] = (
                Counter(CPU_METRIC[: -len("_total")], "Thread CPU inside Mirror._handle",
                        registry=reg),
                Counter(COPIES_METRIC[: -len("_total")], "Mirror._handle calls", registry=reg),
            )  # fmt: skip
        box = [0.0]
        try:
            await _Timed(handle(self, tap), box)
        finally:
            pair[0].inc(box[0])
            pair[1].inc()

    timed_handle._bench_timed = True  # type: ignore[attr-defined]
    mirror.Mirror._handle = timed_handle  # type: ignore[method-assign]


def create_module(ctx: Any) -> Any:
    """The shadow tests' module, unchanged, with the shadow workers' CPU clock installed."""
    from tests.shadow import shadow_apps

    _instrument()
    return shadow_apps.create_module(ctx)


# -- the bench ------------------------------------------------------------------------------


async def load(url: str, n: int, concurrency: int) -> list[float]:
    import httpx

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


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the raw client: a GET written whole, its
    answer read to the end of its Content-Length, the latency from ``t0`` to last byte."""

    def __init__(self, host: bytes, done: Any) -> None:
        self.host = host
        self.done = done  # called with (self, latency in seconds, status)
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get(self, i: int, t0: float) -> None:
        assert self.transport is not None
        self.t0 = t0
        self.transport.write(
            b"GET /api/items/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i % 100, self.host)
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        length = int(head[at + 17 :].split(b"\r\n", 1)[0])
        if len(buf) < end + 4 + length:
            return
        latency = time.perf_counter() - self.t0
        del buf[: end + 4 + length]
        self.done(self, latency, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.t0:
            self.done(self, float("nan"), 0)


async def raw_load(
    url: str, n: int, connections: int, rate: float | None = None
) -> tuple[list[float], float]:
    """``n`` GETs on ``connections`` keep-alive connections; the latencies and the rate.

    ``rate`` None: closed loop, each connection sends its next request when the answer is
    in. A number: open loop, a request every 1/``rate`` s whatever the answers do, each on
    an idle connection; one due while every connection is busy waits for one, and its
    latency counts from when it was due. Timers have millisecond resolution: requests due
    within the same millisecond leave together, and a late timer does not move the
    schedule. A raw-socket client, not httpx: a few µs of CPU per request, so it leaves the
    CPU to the processes measured, and a latency is not a wait in a busy client's queue."""
    host, port = url.split("//", 1)[1].split(":")
    loop = asyncio.get_running_loop()
    times: list[float] = []
    idle: list[_Conn] = []
    waiting: collections.deque[tuple[int, float]] = collections.deque()
    finished = loop.create_future()
    bad: list[int] = []
    issued = 0

    def done(conn: _Conn, latency: float, status: int) -> None:
        nonlocal issued
        conn.t0 = 0.0
        if status == 0:  # (connection_lost) not to be used again: the run is void
            if not finished.done():
                finished.set_exception(RuntimeError("the gateway closed a connection mid-request"))
            return
        if status != 200:
            bad.append(status)
        times.append(latency)
        if len(times) >= n:
            if not finished.done():
                finished.set_result(None)
        elif rate is None and issued < n:
            conn.get(issued, time.perf_counter())
            issued += 1
        elif waiting:
            i, due = waiting.popleft()
            conn.get(i, due)
        else:
            idle.append(conn)

    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Conn(host.encode(), done), host, int(port))
        conns.append(conn)
    start = time.perf_counter()
    if rate is None:
        for conn in conns[:n]:
            conn.get(issued, time.perf_counter())
            issued += 1
    else:
        idle += conns
        interval = 1.0 / rate
        for i in range(n):
            due = start + i * interval
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            if idle:
                idle.pop().get(i, time.perf_counter())
            else:
                waiting.append((i, due))
    await asyncio.wait_for(finished, 60)
    elapsed = time.perf_counter() - start
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    if bad:
        raise RuntimeError(f"{len(bad)} answers were not 200: {sorted(set(bad))}")
    return times, n / elapsed


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def scrape(admin: str, name: str) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(admin + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _wait_upstream(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream exited with {proc.returncode}")
        try:
            with opener.open(url + "/api/items/1", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"upstream {url} not ready after {timeout:.0f} s")


def main() -> int:
    import importlib

    import psutil

    # tests/shadow's helpers (on sys.path above; not a package mypy follows)
    helpers = importlib.import_module("shadow_helpers")
    ADMIN_TOKEN, ShadowGateway = helpers.ADMIN_TOKEN, helpers.ShadowGateway

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 requests × 3 rounds")
    ap.add_argument(
        "--requests", type=int, help="requests per gateway per round (1500; --paced 3000)"
    )
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rounds", type=int, help="rounds, alternating the gateways (10)")
    ap.add_argument("--pin", action="store_true",
                    help="gateways on CPU 1, client and upstream on CPU 0")  # fmt: skip
    ap.add_argument("--paced", type=float, metavar="FRACTION",
                    help="open loop: requests at FRACTION of the rate the closed-loop client "
                         "reaches on the 0 %% gateway in this run (bench/run: 0.25)")  # fmt: skip
    ap.add_argument("--connections", type=int, default=8,
                    help="--paced: the client's keep-alive connections at most (8)")  # fmt: skip
    ap.add_argument("--no-probe", action="store_true",
                    help="load the module directly: no CPU clock in the shadow workers")  # fmt: skip
    args = ap.parse_args()
    if args.paced is not None and not 0 < args.paced <= 1:
        ap.error("--paced: a fraction in (0, 1]")
    requests = args.requests or (500 if args.quick else 3000 if args.paced else 1500)
    rounds = args.rounds or (3 if args.quick else 10)
    warmup = 200 if args.quick else WARMUP
    load_before = os.getloadavg()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started: list[Any] = []

    def stop_everything() -> None:
        while started:
            p = started.pop()
            if isinstance(p, subprocess.Popen):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            else:
                p.stop()

    atexit.register(stop_everything)
    port = helpers._free_port()
    work = tempfile.mkdtemp(prefix="chatgw-shadow-bench-")
    upstream = f"http://127.0.0.1:{port}"
    with open(os.path.join(work, "upstream.log"), "wb") as uplog:
        up = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.shadow.shadow_apps:upstream", "--port",
             str(port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=uplog,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    started.append(up)

    # the test module, loaded through this file: see "measured in the shadow workers"
    # (the loop gateway only: in the others no copy runs in the serving loop, and in the
    # process one the probe would add its clock reads to the worker's CPU per copy)
    def env_for(variant: str) -> dict[str, str]:
        probed = variant == "loop" and not args.no_probe
        loader = "bench.shadow" if probed else "tests.shadow.shadow_apps"
        return {
            "CHATGW_EXTRA_MODULES": f"shadowtest={loader}:create_module",
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        }

    gws: dict[str, Any] = {}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu = dict.fromkeys(VARIANTS, 0.0)
    copies = dict.fromkeys(VARIANTS, 0)
    counts: dict[str, dict[str, int]] = {}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    per_round: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    closed_rate = rate = 0.0
    loop_cpu = loop_handled = process_cpu = 0.0
    try:
        _wait_upstream(upstream, up)
        for v, (percent, isolation) in VARIANTS.items():
            settings = f"  shadow: {{isolation: {isolation}, nice: {os.environ.get('BENCH_SHADOW_NICE', 'idle')}}}"
            text = helpers.routes_text(upstream, SHADOW % percent, settings=settings)
            gws[v] = ShadowGateway(text, env_for(v), work)
            started.append(gws[v])
        procs = {v: psutil.Process(g.proc.pid) for v, g in gws.items()}
        if args.pin:
            os.sched_setaffinity(0, {0})
            os.sched_setaffinity(up.pid, {0})
            for proc in procs.values():
                for p in (proc, *proc.children(recursive=True)):
                    p.cpu_affinity([1])
        for g in gws.values():
            asyncio.run(load(g.url, warmup, args.concurrency))
        if args.paced is not None:  # the rate: a fraction of what the closed loop reaches
            _, closed_rate = asyncio.run(raw_load(gws["off"].url, CALIBRATE, args.concurrency))
            rate = args.paced * closed_rate
        done = {v: sum(g.wait_counts(warmup if VARIANTS[v][0] else 0).values())
                for v, g in gws.items()}  # fmt: skip
        first = dict(done)
        w0 = scrape(gws["loop"].admin, CPU_METRIC), scrape(gws["loop"].admin, COPIES_METRIC)
        p0 = scrape(gws["process"].admin, WORKER_CPU_METRIC)
        names = list(gws)
        for rnd in range(rounds):
            # each round starts with the next gateway: no one always follows the same one
            for v in names[rnd % len(names) :] + names[: rnd % len(names)]:
                g = gws[v]
                print(f"round {rnd + 1}/{rounds}: {LABELS[v]} ...", file=sys.stderr, flush=True)
                c0 = sum(procs[v].cpu_times()[:2])
                if args.paced is None:
                    got = asyncio.run(load(g.url, requests, args.concurrency))
                else:
                    got, achieved = asyncio.run(raw_load(g.url, requests, args.connections, rate))
                    rates[v].append(achieved)
                times[v] += got
                per_round[v].append(got)
                if VARIANTS[v][0]:  # every copy of this round counted before the CPU is read
                    done[v] = sum(g.wait_counts(done[v] + requests, timeout=30).values())
                cpu[v] += sum(procs[v].cpu_times()[:2]) - c0
        for v, g in gws.items():
            counts[v] = g.counts()
            copies[v] = sum(counts[v].values()) - first[v]
        loop_cpu = scrape(gws["loop"].admin, CPU_METRIC) - w0[0]
        loop_handled = scrape(gws["loop"].admin, COPIES_METRIC) - w0[1]
        process_cpu = scrape(gws["process"].admin, WORKER_CPU_METRIC) - p0
    finally:
        stop_everything()

    n = requests * rounds
    rows: list[dict[str, Any]] = []
    ok = True
    lines = []
    judge = "process"  # what the README recommends for a route shadowed at 100 %
    setup = "pinned: " if args.pin else ""
    if args.paced is not None:
        setup += f"paced at {args.paced:.0%} load: "

    def typical(v: str, q: float) -> float:
        """The median over the rounds of each round's quantile ``q``, in ms: one round
        that met a hiccup of the machine (a p99 several times the others') moves it less
        than it moves the quantile of all rounds pooled."""
        return statistics.median(pct(r, q) for r in per_round[v]) * 1000

    for v in ("control", "loop", "process"):
        judged = v == judge
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            off, on = typical("off", q), typical(v, q)
            within = on <= off * 1.05 + 0.1
            if judged:
                ok &= within
            change = (on / off - 1) * 100
            pooled = (pct(times[v], q) / pct(times["off"], q) - 1) * 100
            verdict = ("PASS" if within else "MISS") if judged else "(info)"
            lines.append(f"{name}: {LABELS['off']} {off:.2f} ms, {LABELS[v]} {on:.2f} ms "
                         f"({change:+.1f} %; all rounds pooled {pooled:+.1f} %) "
                         f"{verdict}")  # fmt: skip
            rows.append(row(f"{setup}{LABELS[v]}: primary {name} vs off (median of rounds)",
                            change, "%", "within 5 % (+0.1 ms floor)" if judged else "info",
                            reference=f"shadow 0 %: primary {name} ms", ref_value=off,
                            ok=within if judged else None))  # fmt: skip
            rows.append(row(f"{setup}{LABELS[v]}: primary {name} vs off, all rounds pooled",
                            pooled, "%", "info"))  # fmt: skip
    mean = {v: statistics.mean(times[v]) * 1000 for v in VARIANTS}
    per_req = {v: cpu[v] / n * 1e6 for v in VARIANTS}
    marginal = {v: (cpu[v] - cpu["off"]) / max(copies[v], 1) * 1e6 for v in ("loop", "process")}
    in_loop = loop_cpu / max(loop_handled, 1) * 1e6
    in_process = process_cpu / max(copies["process"], 1) * 1e6
    rows += [
        row(f"{LABELS['process']}: shadow side CPU per copy, in the worker process "
            "(gateway_shadow_worker_cpu_seconds_total)", in_process, "µs", "info"),
        row(f"{LABELS['process']}: serving process CPU per copy (hand-off; process CPU/request "
            "− at 0 %)", marginal["process"], "µs", "info"),
        row(f"{LABELS['loop']}: shadow cost per copy, by difference (process CPU/request − at "
            "0 %)", marginal["loop"], "µs", "info"),
    ]  # fmt: skip
    if not args.no_probe:
        rows.append(
            row(f"{LABELS['loop']}: shadow side CPU per copy, measured in the shadow workers "
                "(Mirror._handle steps)", in_loop, "µs", "info"),
        )  # fmt: skip
    for v in VARIANTS:
        rows.append(row(f"serving process CPU per request, {LABELS[v]}", per_req[v], "µs", "info",
                        reference="shadow 0 %", ref_value=per_req["off"]))  # fmt: skip
    rows.append(row(f"copies made (measured rounds), {LABELS['process']}", copies["process"],
                    "copies", "info (= requests)", reference="primary requests",
                    ref_value=n))  # fmt: skip

    if args.paced is None:
        client = f"concurrency {args.concurrency}"
    else:
        medians = {v: statistics.median(rates[v]) for v in VARIANTS}
        client = (f"open loop at {rate:.0f} req/s ({args.paced:.0%} of the closed loop's "
                  f"{closed_rate:.0f} req/s at concurrency {args.concurrency}, 0 % gateway), up "
                  f"to {args.connections} connections; achieved "
                  + ", ".join(f"{v} {medians[v]:.0f}" for v in VARIANTS))  # fmt: skip
        rows.append(row(f"{setup}request rate (open loop)", rate, "req/s", "info",
                        reference=f"closed loop at concurrency {args.concurrency}, shadow 0 %",
                        ref_value=closed_rate))  # fmt: skip
    print(f"\n{n} requests per gateway, {client}, {rounds} rounds "
          f"(warm-up {warmup}), load {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print("\n".join(lines))
    print("mean: " + ", ".join(f"{LABELS[v]} {mean[v]:.2f} ms" for v in VARIANTS))
    print(f"copies: process {copies['process']} {counts.get('process')}, "
          f"loop {copies['loop']} {counts.get('loop')}")  # fmt: skip
    print("serving process CPU per request: "
          + ", ".join(f"{LABELS[v]} {per_req[v]:.0f} µs" for v in VARIANTS))  # fmt: skip
    print(f"  isolation process: {in_process:.0f} µs per copy in the worker process, "
          f"{marginal['process']:.0f} µs per copy on the serving process (the tap and the "
          "hand-off, by difference)")  # fmt: skip
    probe = "not measured (--no-probe)" if args.no_probe else f"{in_loop:.0f} µs measured inside"
    print(f"  isolation loop: {marginal['loop']:.0f} µs per copy by difference, {probe} "
          "the shadow workers")  # fmt: skip
    print("RESULT:", "PASS" if ok else "MISS", f"(isolation {judge} within 5 % of shadowing off)")

    meta = {
        **run_meta(load_before),
        "quick": args.quick,
        "requests_per_round": requests,
        "rounds": rounds,
        "warmup": warmup,
        "concurrency": args.concurrency,
        "pinned": args.pin,
        "paced": args.paced,
        "rate": rate or None,
        "closed_loop_rate": closed_rate or None,
        "achieved_rates": rates if args.paced is not None else None,
        "per_round_ms": {
            v: [{"p50": pct(r, 0.5) * 1000, "p99": pct(r, 0.99) * 1000} for r in per_round[v]]
            for v in VARIANTS
        },
        "connections": args.connections if args.paced is not None else None,
        "shadow_counts": counts,
        "gateway_cpu_s": cpu,
        "process_worker_cpu_s": process_cpu,
        "loop_worker_cpu_s": None if args.no_probe else loop_cpu,
        "loop_worker_copies": None if args.no_probe else loop_handled,
        "probe": not args.no_probe,
        "method": (
            "four gateway processes on the same route: shadow 0 %, a control at 0 %, 100 % "
            f"with isolation loop, 100 % with isolation process (judged: {judge}); rounds "
            "alternated, each starting with the next gateway; httpx client at the given "
            "concurrency, or with --paced a raw-socket client in an open loop; judged on the "
            "median over the rounds of each round's p50/p99. Shadow CPU: the worker "
            "process's own CPU (gateway_shadow_worker_cpu_seconds_total); in loop isolation "
            "thread CPU time around every step of Mirror._handle (this bench's module "
            "loader); and each serving process's CPU per request minus at 0 %, per copy, "
            "after each round's copies are done."
        ),
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    suite = "shadow_pinned" if args.pin else "shadow_paced" if args.paced else "shadow"
    out = os.path.join(ROOT, "bench", "results", f"{suite}.json")
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"name": suite, "rows": rows, "meta": meta}, fh, indent=2,
                  ensure_ascii=False)  # fmt: skip
        fh.write("\n")
    print(f"wrote {os.path.relpath(out, ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
