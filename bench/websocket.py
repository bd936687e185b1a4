"""WebSocket bench: idle connections held by one gateway process, and the relay's latency.

Run it::

    .venv/bin/python bench/websocket.py            # 10 000 idle connections, 10 s of relay
    .venv/bin/python bench/websocket.py --quick    # 1 000 connections, 3 s of relay

Options: ``-n/--connections`` (idle connections; 10 000, --quick 1 000), ``--rate`` (relay
msg/s, 5 000), ``--duration`` (relay seconds measured per target, 10; --quick 3),
``--slice`` (1 s), ``--relay-conns`` (50), ``--clients`` (relay client processes, 1),
``--tracemalloc`` (run the gateway under tracemalloc and print where the idle connections'
Python memory goes, by component, file and line; that run's RSS, latency and CPU figures
are tracemalloc's, so it writes ``bench/results/websocket-tracemalloc.json`` instead).

What runs, all on 127.0.0.1 with ephemeral ports, each in its own process group (stopped on
exit, on error and on Ctrl-C, with :func:`bench.harness.stop_all`):

``node``      a Node ``ws`` echo server (``node -e``, ``ws`` from deploy/legacy/node_modules;
              ``GET /health`` answers 200 for readiness) — the legacy upstream
``gateway``   ``chatgw serve`` (1 process, admin listener on a second port) with a routes.yaml
              in a temp dir: one ``websocket: true`` route ``/ws`` → the Node, legacy only
              (no module); access log on, to a file in the temp dir (the gateway's stdout);
              control-plane state in the temp dir

The client is this process (asyncio on uvloop, the ``websockets`` library). ``RLIMIT_NOFILE``
is raised to 200 000 (soft and hard) before anything starts, so that the gateway and the
Node inherit it; that needs CAP_SYS_RESOURCE, not just uid 0: without it the soft limit goes
to the hard one, and the bench warns when the gateway cannot hold N relayed connections (two
sockets each: at a hard limit of 20 000 that is 9 992).

1. **Idle connections.** Warm up (20 connections, one echo each, closed), let the gateway
   settle, read its RSS (and USS) and the Node's; open N connections through the gateway,
   at most 100 handshakes at a time (the gateway connects upstream before it accepts, so an
   open client socket means both legs are up); wait until the gateway's RSS is stable (±1 MiB
   over 2 s); then (RSS_after − RSS_before) / N → **KiB per connection** (target ≤ 30 KiB),
   the Node's the same way as a reference. Then the connections are checked: still open,
   the gateway's ``gateway_websockets_open`` gauge, one echo on a sample of 100, then one
   echo on every connection (and the gateway's RSS after that traffic, since a relay that
   has carried a message may hold buffers an untouched one does not). Failed opens are
   counted by error, and the gateway's access log by status.
2. **Relay.** C connection indices (50), each with a connection directly to the Node and one
   through the gateway; each index sends a timestamped 128-byte text message every C / rate
   seconds (an absolute schedule, staggered across indices, so the aggregate is ``rate``
   msg/s, 5 000). Time is cut into slices (1 s) that go alternately to the Node directly and
   to the gateway, in ABBA order, after a warm-up (2 s; 1 s in --quick), so that the
   machine's other load falls on both alike. Round-trip time of every echo → p50 / p99 per
   target, and the **added** p50 / p99 (gateway − direct; target p99 ≤ 2 ms). The achieved
   rate (echoes of measured messages / measured seconds), the client's lag behind its
   schedule and its CPU show whether the client kept up (``--clients 2`` splits the load
   over two processes). The gateway's CPU (psutil user + system) from the first measured
   slice to the last echo, less its idle CPU outside its slices, / its echoed messages →
   **CPU µs per message** (each relayed twice: to the Node and back); the Node's in the
   gateway's slices as a reference.

Output: a table, and ``bench/results/websocket.json``::

    {"name": "websocket", "rows": [{"figure", "value", "unit", "reference", "ref_value",
     "target", "pass"}, ...], "meta": {...}}

Numbers on a shared 2-core VM are noisy (client, gateway and Node share the cores with
whatever else runs); the load average before and after is in ``meta``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import collections
import importlib
import json
import multiprocessing
import os
import random
import resource
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# bench.harness, imported by name rather than `from bench.harness import ...` so that mypy
# does not follow it into that file's own type errors (`mypy bench/websocket.py` stays clean).
_harness = importlib.import_module("bench.harness")
from bench.common import free_ports, row, run_meta  # noqa: E402

spawn: Callable[..., psutil.Process] = _harness.spawn
stop_all: Callable[[], None] = _harness.stop_all
free_port: Callable[[], int] = _harness.free_port
wait_ready: Callable[..., None] = _harness.wait_ready
cpu_seconds: Callable[[list[psutil.Process]], float] = _harness.cpu_seconds
_on_signal: Callable[[int, Any], None] = _harness._on_signal

PY = str(ROOT / ".venv" / "bin" / "python")
CHATGW = str(ROOT / ".venv" / "bin" / "chatgw")
NODE_MODULES = ROOT / "deploy" / "legacy" / "node_modules"
RESULTS = ROOT / "bench" / "results"
NOFILE = 200_000
TARGET_KIB_PER_CONN = 30.0
TARGET_ADDED_P99_MS = 2.0
OPEN_CONCURRENCY = 100
SAMPLE = 100
MSG_SIZE = 128

NODE_ECHO = r"""
const http = require('http');
const { WebSocketServer } = require('ws');
const server = http.createServer((q, r) => {
  r.writeHead(200, {'content-type': 'text/plain'});
  r.end('ok');
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
server.listen(Number(process.env.BENCH_PORT), '127.0.0.1', 4096, () => console.log('ready'));
"""

ROUTES_YAML = """
settings:
  backend_header: true
  access_log: true
defaults:
  timeout: 10s
  body_limit: 2MiB
  sticky: none
upstreams:
  node:
    url: http://127.0.0.1:{node_port}
    connect_timeout: 5s
    read_timeout: 10s
    pool_size: 200
routes:
  - name: ws
    match: {{path: /ws, websocket: true}}
    legacy: node
"""

# `--tracemalloc`: the gateway's CLI under tracemalloc; SIGUSR1 dumps a snapshot to
# $BENCH_TM_DIR/snap-<n>.bin (n = 1, 2, ...). Bench-only, nothing in the gateway changes.
TRACEMALLOC_WRAPPER = r"""
import os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ.get("BENCH_TM_FRAMES", "8")))
_n = [0]
def _dump(signum, frame):
    _n[0] += 1
    path = os.path.join(os.environ["BENCH_TM_DIR"], "snap-%d.bin" % _n[0])
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, _dump)
from gateway.cli import main
sys.argv = ["chatgw", *sys.argv[1:]]
sys.exit(main())
"""


# -- set-up ---------------------------------------------------------------------------------

_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> tuple[tuple[int, int], str]:
    """Soft and hard RLIMIT_NOFILE to :data:`NOFILE` (children inherit it); else the soft
    limit to the hard one, and why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(NOFILE, soft)
    note = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError) as exc:  # no CAP_SYS_RESOURCE: up to the hard limit
        note = f"setrlimit({want}, {max(want, hard)}): {exc} (hard limit {hard}"
        if _has_cap_sys_resource() is False:
            note += ", and this process lacks CAP_SYS_RESOURCE although it is root"
        note += ")"
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE), note


def _has_cap_sys_resource() -> bool | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE = 24
    except (OSError, ValueError):
        pass
    return None


@dataclass
class Servers:
    node: psutil.Process
    gateway: psutil.Process
    node_port: int
    port: int
    admin: int
    tmp: Path
    access_log: Path
    tm_dir: Path | None = None

    @property
    def gw_ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def node_ws(self) -> str:
        return f"ws://127.0.0.1:{self.node_port}/ws"


def start_servers(tmp: Path, *, trace: bool) -> Servers:
    node_port = free_port()
    node = spawn(
        ["node", "-e", NODE_ECHO],
        env={"BENCH_PORT": str(node_port), "NODE_PATH": str(NODE_MODULES)},
        log=tmp / "node.log",
    )
    wait_ready(f"http://127.0.0.1:{node_port}/health", node, tmp / "node.log")

    port, admin = free_ports(2)
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES_YAML.format(node_port=node_port))
    access_log = tmp / "gateway-access.log"
    tm_dir = tmp / "tracemalloc" if trace else None
    if tm_dir:
        tm_dir.mkdir()
    program = [PY, "-c", TRACEMALLOC_WRAPPER] if trace else [CHATGW]
    # The access log goes to the gateway's stdout; stderr (warnings) to its own file.
    proc = spawn(
        ["sh", "-c", 'exec "$0" "$@" >"$BENCH_ACCESS_LOG_FILE" 2>"$BENCH_GW_ERR"',
         *program, "serve", "--config", str(routes),
         "--host", "127.0.0.1", "--port", str(port), "--admin-host", "127.0.0.1",
         "--admin-port", str(admin)],
        env={"PYTHONPATH": str(ROOT), "BENCH_ACCESS_LOG_FILE": str(access_log),
             "BENCH_GW_ERR": str(tmp / "gateway.log"),
             "CHATGW_CONTROL_PREFIX": f"chatgw-bench-ws-{os.getpid()}:",
             "CHATGW_STATE_DIR": str(tmp / "state"),
             **({"BENCH_TM_DIR": str(tm_dir)} if tm_dir else {})},
        log=tmp / "gateway.log",
    )  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}/health", proc, tmp / "gateway.log", timeout=30)
    return Servers(node, proc, node_port, port, admin, tmp, access_log, tm_dir)


def access_statuses(path: Path) -> dict[str, int]:
    """HTTP status → count over the gateway's access log (101: a relayed WebSocket)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.open("rb"):
        try:
            counts[str(json.loads(line)["status"])] += 1
        except (ValueError, KeyError):
            counts["unreadable"] += 1
    return dict(sorted(counts.items()))


def gauge_open(admin: int) -> int | None:
    """The gateway's ``gateway_websockets_open`` gauge, summed over its labels."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_websockets_open{"):
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


# -- memory ---------------------------------------------------------------------------------


@dataclass
class Mem:
    rss: int
    uss: int | None


def mem(p: psutil.Process, *, uss: bool = True) -> Mem:
    if uss:
        try:
            full = p.memory_full_info()
            return Mem(full.rss, full.uss)
        except (psutil.AccessDenied, AttributeError):
            pass
    return Mem(p.memory_info().rss, None)


async def stable_rss(p: psutil.Process, *, window: float = 2.0, timeout: float = 30.0) -> int:
    """Poll RSS every 0.25 s until it moved less than 1 MiB over ``window`` seconds."""
    samples: collections.deque[tuple[float, int]] = collections.deque()
    deadline = time.monotonic() + timeout
    while True:
        now, rss = time.monotonic(), p.memory_info().rss
        samples.append((now, rss))
        while len(samples) > 1 and now - samples[1][0] >= window:
            samples.popleft()  # keep one sample at least `window` old
        values = [r for _, r in samples]
        if now - samples[0][0] >= window and max(values) - min(values) < 1 << 20:
            return rss
        if now > deadline:
            return rss
        await asyncio.sleep(0.25)


# -- idle connections -----------------------------------------------------------------------


async def open_many(
    url: str, n: int, concurrency: int, errors: collections.Counter[str]
) -> list[ClientConnection]:
    sem = asyncio.Semaphore(concurrency)
    out: list[ClientConnection] = []

    async def one() -> None:
        async with sem:
            try:
                ws = await connect(
                    url, proxy=None, compression=None, ping_interval=None, open_timeout=60,
                    close_timeout=10, max_queue=4, user_agent_header=None,
                )  # fmt: skip
            except Exception as exc:  # counted and reported, never fatal
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                return
            out.append(ws)

    await asyncio.gather(*(one() for _ in range(n)))
    return out


async def echo_check(
    conns: list[ClientConnection], errors: collections.Counter[str], concurrency: int = 200
) -> int:
    """One text message on each connection; how many came back unchanged within 20 s."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, ws: ClientConnection) -> bool:
        token = f"echo-{i}-{random.getrandbits(32):08x}"
        async with sem:
            try:
                await ws.send(token)
                got = await asyncio.wait_for(ws.recv(), 20)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                return False
        if got != token:
            errors[f"wrong echo {str(got)[:40]!r}"] += 1
        return got == token

    results = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(conns)))
    return sum(results)


async def close_many(conns: list[ClientConnection], concurrency: int = 500) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with sem:
            try:
                await ws.close()
            except Exception:
                ws.transport.abort()

    await asyncio.gather(*(one(ws) for ws in conns))


async def tracemalloc_snapshot(s: Servers, n: int) -> Path:
    """Ask the gateway (under ``--tracemalloc``) for snapshot ``n`` and wait for the file."""
    assert s.tm_dir is not None
    path = s.tm_dir / f"snap-{n}.bin"
    s.gateway.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no tracemalloc snapshot {path} after 120 s")
        await asyncio.to_thread(_poke, s.port)  # let the loop run Python code
        await asyncio.sleep(0.2)
    return path


def _poke(port: int) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            r.read()
    except OSError:
        pass


@dataclass
class Idle:
    n: int
    opened: int = 0
    held: int = 0
    gauge: int | None = None
    open_seconds: float = 0.0
    sample_ok: int = 0
    sample_n: int = 0
    all_ok: int = 0
    gw_before: Mem = field(default_factory=lambda: Mem(0, None))
    gw_after: Mem = field(default_factory=lambda: Mem(0, None))
    gw_after_traffic: int = 0
    node_before: int = 0
    node_after: int = 0
    client_before: int = 0
    client_after: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    tracemalloc_top: list[str] = field(default_factory=list)

    def per_conn(self, before: int, after: int) -> float:
        return (after - before) / max(self.opened, 1) / 1024


async def idle_phase(s: Servers, n: int) -> Idle:
    r = Idle(n)
    errors: collections.Counter[str] = collections.Counter()
    me = psutil.Process()

    warm = await open_many(s.gw_ws, 20, 20, errors)
    await echo_check(warm, errors)
    await close_many(warm)
    if errors:
        raise RuntimeError(f"warm-up through the gateway failed: {dict(errors)}")
    await asyncio.sleep(1.0)
    await stable_rss(s.gateway)
    if s.tm_dir:
        snap0 = await tracemalloc_snapshot(s, 1)
    r.gw_before = mem(s.gateway)
    r.node_before = s.node.memory_info().rss
    r.client_before = me.memory_info().rss

    say(f"idle: gateway RSS {r.gw_before.rss / 2**20:.1f} MiB; opening {n:,} connections ...")
    t0 = time.perf_counter()
    conns = await open_many(s.gw_ws, n, OPEN_CONCURRENCY, errors)
    r.open_seconds = time.perf_counter() - t0
    r.opened = len(conns)
    say(f"idle: {r.opened:,} open in {r.open_seconds:.1f} s ({sum(errors.values())} failed); "
        "waiting for a stable RSS ...")  # fmt: skip
    await stable_rss(s.gateway)
    await stable_rss(s.node, timeout=10)
    r.gw_after = mem(s.gateway)
    r.node_after = s.node.memory_info().rss
    r.client_after = me.memory_info().rss
    if s.tm_dir:
        snap1 = await tracemalloc_snapshot(s, 2)
        r.tracemalloc_top = tracemalloc_diff(snap0, snap1, max(r.opened, 1))

    r.held = sum(1 for ws in conns if ws.state is State.OPEN)
    r.gauge = await asyncio.to_thread(gauge_open, s.admin)
    sample = random.sample(conns, min(SAMPLE, len(conns)))
    r.sample_n = len(sample)
    r.sample_ok = await echo_check(sample, errors)
    say(f"idle: one echo on each of {len(conns):,} ...")
    r.all_ok = await echo_check(conns, errors)
    r.gw_after_traffic = await stable_rss(s.gateway)
    say(f"idle: {r.all_ok:,} echoed; closing ...")
    await close_many(conns)
    say("idle: closed")
    r.errors = dict(errors.most_common(10))
    return r


# Who allocated it: the most recent frame of the allocation's traceback that is in one of these.
# (A tunnelled connection, gateway/ws_tunnel.py, is the tunnel, its two halves and the
# plan's callbacks; the uvicorn and websockets lines are the frame relay's, the path of a
# gateway that does not tunnel: https:// upstreams, another server than gateway.http11.)
_COMPONENTS = (
    ("/gateway/ws_tunnel.py", "gateway: ws_tunnel (tunnel, its two halves, plan)"),
    ("/uvicorn/", "client side: uvicorn websockets-sansio protocol (+ websockets ServerProtocol)"),
    ("/websockets/asyncio/", "upstream side: websockets asyncio ClientConnection"),
    ("/gateway/app.py", "gateway: app (websocket_tunnel's callbacks; _websocket for the relay)"),
    ("/gateway/", "gateway: other (proxy_ws.relay's tasks and closures, ...)"),
)


def _short(filename: str) -> str:
    return (
        filename.split("site-packages/")[-1]
        .split("/lib/python3.11/")[-1]
        .replace(str(ROOT) + "/", "")
    )


def tracemalloc_diff(before: Path, after: Path, n: int) -> list[str]:
    """Python allocations held per connection between two snapshots: by component (the
    innermost uvicorn / websockets.asyncio / gateway frame), by file, and by line."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    by_tb = new.compare_to(old, "traceback")
    total = sum(st.size_diff for st in by_tb)
    components: collections.Counter[str] = collections.Counter()
    for st in by_tb:
        name = "other: asyncio / interpreter, no component frame in the traceback"
        for frame in reversed(st.traceback):  # most recent first
            hit = next((c for key, c in _COMPONENTS if key in frame.filename), None)
            if hit:
                name = hit
                break
        components[name] += st.size_diff
    lines = [f"tracemalloc: +{total / n / 1024:.1f} KiB of Python allocations per connection"]
    lines.append("  by component:")
    for name, size in components.most_common():
        lines.append(f"  {size / n / 1024:8.1f} KiB/conn  {name}")
    lines.append("  by file:")
    for st in new.compare_to(old, "filename")[:12]:
        lines.append(
            f"  {st.size_diff / n / 1024:8.1f} KiB/conn  {st.count_diff / n:6.1f} blocks/conn"
            f"  {_short(st.traceback[0].filename)}"
        )
    lines.append("  by line:")
    for st in new.compare_to(old, "lineno")[:20]:
        frame = st.traceback[0]
        lines.append(
            f"  {st.size_diff / n:8.0f} B/conn    {st.count_diff / n:6.1f} blocks/conn"
            f"  {_short(frame.filename)}:{frame.lineno}"
        )
    return lines


# -- relay ----------------------------------------------------------------------------------


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


Slice = tuple[str, float, float, bool]  # (target, from, to, measured), time.monotonic()


def schedule(start: float, warmup: float, rounds: int, length: float) -> list[Slice]:
    """Warm-up (half each), then ``rounds`` measured slices per target in ABBA order, so
    that the machine's other load drifts over both targets alike."""
    out: list[Slice] = [("direct", start, start + warmup / 2, False),
                        ("gateway", start + warmup / 2, start + warmup, False)]  # fmt: skip
    t = start + warmup
    for k in range(rounds):
        for name in ("direct", "gateway") if k % 2 == 0 else ("gateway", "direct"):
            out.append((name, t, t + length, True))
            t += length
    return out


def load_worker(
    urls: dict[str, str], conns: int, rate: float, slices: list[Slice]
) -> dict[str, Any]:
    """One client process's share of the relay load (runs under multiprocessing)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_load(urls, conns, rate, slices))


async def _load(
    urls: dict[str, str], conns: int, rate: float, slices: list[Slice]
) -> dict[str, Any]:
    """``conns`` connections to each URL; every connection index sends one message each
    ``conns / rate`` s, on the connection of the target whose slice it is."""
    opts: dict[str, Any] = {"proxy": None, "compression": None, "ping_interval": None}
    sockets = {
        name: [await connect(url, open_timeout=30, max_size=None, **opts) for _ in range(conns)]
        for name, url in urls.items()
    }
    interval = conns / rate  # each connection index's period
    start, end = slices[0][1], slices[-1][2]
    starts = [sl[1] for sl in slices]
    rtts: dict[str, list[float]] = {name: [] for name in urls}
    lags: dict[str, list[float]] = {name: [] for name in urls}
    sent = collections.Counter[str]()
    received = collections.Counter[str]()
    errors: collections.Counter[str] = collections.Counter()
    pad = "x" * (MSG_SIZE - 21)

    async def sender(i: int) -> None:
        t = start + i * interval / conns
        while t < end:
            name, _, slice_end, measured = slices[bisect.bisect_right(starts, t) - 1]
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if measured:
                lags[name].append(now - t)
                # Sent after its slice ended: the client fell behind; not counted, so that
                # the achieved rate shows it.
                measured = now < slice_end
            if measured:
                sent[name] += 1
            ws = sockets[name][i]
            await ws.send(f"{time.perf_counter_ns():020d}{1 if measured else 0}{pad}")
            t += interval

    async def receiver(name: str, ws: ClientConnection) -> None:
        async for msg in ws:
            now = time.perf_counter_ns()
            assert isinstance(msg, str)
            if msg[20] == "1":
                rtts[name].append((now - int(msg[:20])) / 1e6)
                received[name] += 1

    receivers = [
        asyncio.ensure_future(receiver(name, ws)) for name, lst in sockets.items() for ws in lst
    ]
    cpu0, wall0, q0 = time.process_time(), time.monotonic(), runq_wait(os.getpid())
    for result in await asyncio.gather(*(sender(i) for i in range(conns)), return_exceptions=True):
        if isinstance(result, BaseException):
            errors[f"send: {type(result).__name__}: {result}"[:200]] += 1
    cpu1, wall1, q1 = time.process_time(), time.monotonic(), runq_wait(os.getpid())
    deadline = time.monotonic() + 3  # the last echoes
    while sum(received.values()) < sum(sent.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for lst in sockets.values():
        for ws in lst:
            await ws.close()
    for result in await asyncio.gather(*receivers, return_exceptions=True):
        if isinstance(result, BaseException):
            errors[f"recv: {type(result).__name__}: {result}"[:200]] += 1
    return {
        "rtt_ms": rtts,
        "sent": dict(sent),
        "received": dict(received),
        "lag_ms": {name: [x * 1000 for x in v] for name, v in lags.items()},
        "client_cpu_share": (cpu1 - cpu0) / max(wall1 - wall0, 1e-9),
        "client_runq_share": (q1 - q0) / max(wall1 - wall0, 1e-9),
        "errors": dict(errors),
    }


def runq_wait(pid: int) -> float:
    """Seconds the process's threads have waited on a run queue for a CPU (schedstat); the
    bench's measure of how much other load got in the way."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total / 1e9


def _noop(_: int) -> int:
    return os.getpid()


@dataclass
class Relay:
    name: str
    sent: int
    received: int
    rate: float
    p50: float
    p99: float
    p999: float
    max: float
    lag_p99: float
    server_cpu_us: float  # the target's server (gateway, or Node when direct) per message
    node_cpu_us: float | None  # the Node behind the gateway, per message
    runq_share: float  # the target's server: time waiting for a CPU / its slices' time


@dataclass
class RelayRun:
    direct: Relay
    gateway: Relay
    client_cpu: list[float]  # share of a core, per client process
    client_runq: list[float]  # share of the time waiting for a CPU, per client process
    idle_cpu: float  # the gateway's share of a core with nothing open
    errors: dict[str, int]


def relay(
    pool: Any, s: Servers, args: argparse.Namespace, *, warmup: float, rounds: int,
    length: float,
) -> RelayRun:  # fmt: skip
    """Direct and through the gateway, interleaved (see :func:`schedule`)."""
    clients = args.clients
    c0 = cpu_seconds([s.gateway])
    time.sleep(1.0)
    idle_cpu = cpu_seconds([s.gateway]) - c0  # the gateway's CPU share with nothing open
    say(f"relay: {args.rate:,} msg/s over {args.relay_conns} connections, direct and through "
        f"the gateway alternately: {rounds} × {length:g} s each (+{warmup:g} s warm-up) ...")  # fmt: skip
    slices = schedule(time.monotonic() + 2.0, warmup, rounds, length)  # 2 s to connect
    shares = [
        args.relay_conns // clients + (i < args.relay_conns % clients) for i in range(clients)
    ]
    urls = {"direct": s.node_ws, "gateway": s.gw_ws}
    jobs = [(urls, c, args.rate * c / args.relay_conns, slices) for c in shares if c]
    pending = pool.starmap_async(load_worker, jobs)
    cpu = {"direct": 0.0, "gateway": 0.0}  # the target's server, in its own slices
    runq = {"direct": 0.0, "gateway": 0.0}
    node_cpu = {"direct": 0.0, "gateway": 0.0}
    span0 = gw0 = 0.0
    for name, t0, t1, measured in slices:
        if not measured:
            continue
        server = s.gateway if name == "gateway" else s.node
        time.sleep(max(0.0, t0 - time.monotonic()))
        c0, n0, q0 = cpu_seconds([server]), cpu_seconds([s.node]), runq_wait(server.pid)
        if not span0:
            span0, gw0 = time.monotonic(), cpu_seconds([s.gateway])
        time.sleep(max(0.0, t1 - time.monotonic()))
        cpu[name] += cpu_seconds([server]) - c0
        runq[name] += runq_wait(server.pid) - q0
        node_cpu[name] += cpu_seconds([s.node]) - n0
    parts: list[dict[str, Any]] = pending.get(timeout=slices[-1][2] - time.monotonic() + 120)
    # The gateway: all its CPU from the first measured slice until the last echo (so that
    # work on messages that spill past a slice's end counts), less its idle CPU outside its
    # slices.
    span = time.monotonic() - span0
    cpu["gateway"] = cpu_seconds([s.gateway]) - gw0 - idle_cpu * (span - rounds * length)
    seconds = rounds * length
    errors: collections.Counter[str] = collections.Counter()
    for p in parts:
        errors.update(p["errors"])
    out = []
    for name in ("direct", "gateway"):
        rtts = sorted(x for p in parts for x in p["rtt_ms"][name])
        lags = sorted(x for p in parts for x in p["lag_ms"][name])
        received = sum(p["received"].get(name, 0) for p in parts)
        n = max(received, 1)
        out.append(Relay(
            name, sum(p["sent"].get(name, 0) for p in parts), received, received / seconds,
            _pct(rtts, 50), _pct(rtts, 99), _pct(rtts, 99.9), rtts[-1] if rtts else float("nan"),
            _pct(lags, 99), cpu[name] / n * 1e6,
            node_cpu[name] / n * 1e6 if name == "gateway" else None, runq[name] / seconds,
        ))  # fmt: skip
    client_cpu = [round(p["client_cpu_share"], 2) for p in parts]
    client_runq = [round(p["client_runq_share"], 3) for p in parts]
    return RelayRun(out[0], out[1], client_cpu, client_runq, idle_cpu, dict(errors))


# -- report ---------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    def num(v: float) -> str:
        if abs(v) >= 1000 or (abs(v) >= 10 and float(v).is_integer()):
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"

    table = [("figure", "value", "reference", "target", "")]
    for r in rows:
        ref = r["reference"] or ""
        if r["ref_value"] is not None:
            ref = f"{ref}: {num(r['ref_value'])} {r['unit']}"
        verdict = {True: "PASS", False: "MISS", None: ""}[r["pass"]]
        table.append((r["figure"], f"{num(r['value'])} {r['unit']}", ref, r["target"], verdict))
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    for i, t in enumerate(table):
        print("  ".join([t[0].ljust(widths[0]), t[1].rjust(widths[1]),
                         *(c.ljust(w) for c, w in zip(t[2:], widths[2:], strict=True))]).rstrip())  # fmt: skip
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 000 connections, 3 s of relay")
    ap.add_argument("-n", "--connections", type=int, help="idle connections (10 000)")
    ap.add_argument("--rate", type=int, default=5000, help="relay msg/s (5 000)")
    ap.add_argument(
        "--duration", type=float, help="relay seconds measured per target (10; --quick 3)"
    )
    ap.add_argument("--slice", type=float, default=1.0, help="relay slice, seconds (1)")
    ap.add_argument("--relay-conns", type=int, default=50, help="relay connections (50)")
    ap.add_argument("--clients", type=int, default=1, help="relay client processes (1)")
    ap.add_argument("--tracemalloc", action="store_true", help="where the idle memory goes")
    args = ap.parse_args()
    n = args.connections or (1000 if args.quick else 10_000)
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    rounds = max(1, round(duration / args.slice))
    duration = rounds * args.slice

    load_before = os.getloadavg()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(stop_all)
    nofile, nofile_note = raise_nofile()
    fd_note = ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="chatgw-bench-ws-") as d:
        tmp = Path(d)
        try:
            s = start_servers(tmp, trace=args.tracemalloc)
            gw_nofile = s.gateway.rlimit(psutil.RLIMIT_NOFILE)
            say(
                f"node pid {s.node.pid}, gateway pid {s.gateway.pid} (RLIMIT_NOFILE {gw_nofile[0]})"
            )
            if gw_nofile[0] < 2 * n + 100:  # a client socket and an upstream socket each
                fd_note = (f"the gateway may open {gw_nofile[0]} files but {n:,} relayed "
                           f"connections need ~{2 * n + 100:,} (one client and one upstream "
                           f"socket each); RLIMIT_NOFILE could not be raised: {nofile_note}")  # fmt: skip
                say(f"WARNING: {fd_note}")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                idle = runner.run(idle_phase(s, n))
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(args.clients) as pool:
                pool.map(_noop, range(args.clients))  # processes up, modules imported
                run = relay(pool, s, args, warmup=warmup, rounds=rounds, length=args.slice)
                direct, via_gw = run.direct, run.gateway
            say("relay: done")
            gw_alive = s.gateway.is_running() and s.gateway.status() != psutil.STATUS_ZOMBIE
        finally:
            stop_all()  # the gateway flushes its access log as it stops
        gw_log = (tmp / "gateway.log").read_text(errors="replace")[-3000:]
        statuses = access_statuses(s.access_log)

    kib = idle.per_conn(idle.gw_before.rss, idle.gw_after.rss)
    uss_kib = (
        idle.per_conn(idle.gw_before.uss, idle.gw_after.uss)
        if idle.gw_before.uss is not None and idle.gw_after.uss is not None
        else None
    )
    node_kib = idle.per_conn(idle.node_before, idle.node_after)
    client_kib = idle.per_conn(idle.client_before, idle.client_after)
    traffic_kib = idle.per_conn(idle.gw_before.rss, idle.gw_after_traffic)
    added50, added99 = via_gw.p50 - direct.p50, via_gw.p99 - direct.p99
    rate_ok = via_gw.rate >= 0.97 * args.rate and direct.rate >= 0.97 * args.rate
    held_ok = idle.held == n and idle.sample_ok == idle.sample_n and idle.all_ok == idle.opened
    r = f"{args.rate:,}".replace(",", " ")
    rows = [
        row("idle WS: gateway memory per connection", kib, "KiB/conn",
            reference="Node ws server, per upstream connection", ref_value=node_kib,
            target=f"≤ {TARGET_KIB_PER_CONN:g} KiB", ok=kib <= TARGET_KIB_PER_CONN),
        row("idle WS: gateway USS per connection", uss_kib if uss_kib is not None else float("nan"),
            "KiB/conn"),
        row("idle WS: connections held", idle.held, "connections",
            reference=f"{idle.opened} opened of {n}; echo {idle.sample_ok}/{idle.sample_n} sampled, "
                      f"{idle.all_ok}/{idle.opened} all; gauge {idle.gauge}",
            target=f"{n}", ok=held_ok),
        row("idle WS: gateway memory per connection after one echo each", traffic_kib, "KiB/conn"),
        row(f"relay {r} msg/s: added p50", added50, "ms",
            reference="direct to Node p50", ref_value=direct.p50),
        row(f"relay {r} msg/s: added p99", added99, "ms",
            reference="direct to Node p99", ref_value=direct.p99,
            target=f"≤ {TARGET_ADDED_P99_MS:g} ms", ok=added99 <= TARGET_ADDED_P99_MS),
        row(f"relay {r} msg/s: gateway RTT p50", via_gw.p50, "ms",
            reference="direct to Node", ref_value=direct.p50),
        row(f"relay {r} msg/s: gateway RTT p99", via_gw.p99, "ms",
            reference="direct to Node", ref_value=direct.p99),
        row("relay: achieved rate", via_gw.rate, "msg/s", reference="direct to Node",
            ref_value=direct.rate, target=f"≥ 97 % of {r} msg/s", ok=rate_ok),
        row("relay: gateway CPU per message", via_gw.server_cpu_us, "µs/msg",
            reference="Node echo server, same run, per message", ref_value=via_gw.node_cpu_us),
    ]  # fmt: skip
    if uss_kib is None:
        rows.pop(1)
    meta = {
        **run_meta(load_before, "node"),
        "quick": args.quick,
        "tracemalloc": args.tracemalloc,
        "nofile": {"bench": list(nofile), "gateway": list(gw_nofile), "note": nofile_note,
                   "warning": fd_note},
        "idle": {
            "connections": n, "opened": idle.opened, "held": idle.held, "gauge_open": idle.gauge,
            "open_seconds": round(idle.open_seconds, 2), "open_concurrency": OPEN_CONCURRENCY,
            "echo_sample": [idle.sample_ok, idle.sample_n], "echo_all": [idle.all_ok, idle.opened],
            "gateway_rss_mib": [round(idle.gw_before.rss / 2**20, 1), round(idle.gw_after.rss / 2**20, 1),
                                round(idle.gw_after_traffic / 2**20, 1)],
            "gateway_uss_mib": [None if v is None else round(v / 2**20, 1)
                                for v in (idle.gw_before.uss, idle.gw_after.uss)],
            "node_rss_mib": [round(idle.node_before / 2**20, 1), round(idle.node_after / 2**20, 1)],
            "client_kib_per_conn": round(client_kib, 1),
            "errors": idle.errors,
            "tracemalloc": idle.tracemalloc_top,
        },
        "relay": {
            "rate": args.rate, "connections": args.relay_conns, "clients": args.clients,
            "duration_s": duration, "warmup_s": warmup, "message_bytes": MSG_SIZE,
            "slices": f"{rounds} × {args.slice:g} s per target, alternating ABBA",
            "client_cpu_share": run.client_cpu,
            "client_runq_share": run.client_runq,
            "gateway_idle_cpu_share": round(run.idle_cpu, 4),
            "errors": run.errors,
            **{x.name: {"sent": x.sent, "received": x.received, "rate": round(x.rate, 1),
                        "p50_ms": round(x.p50, 3), "p99_ms": round(x.p99, 3),
                        "p999_ms": round(x.p999, 3), "max_ms": round(x.max, 3),
                        "send_lag_p99_ms": round(x.lag_p99, 3),
                        "server_cpu_us_per_msg": round(x.server_cpu_us, 1),
                        "server_runq_share": round(x.runq_share, 4),
                        "node_cpu_us_per_msg": None if x.node_cpu_us is None else round(x.node_cpu_us, 1)}
               for x in (direct, via_gw)},
        },
        "gateway_alive_at_end": gw_alive,
        "gateway_access_log_statuses": statuses,
    }  # fmt: skip

    print(
        f"\n{meta['date']}  {meta['cpus']} CPUs {meta['cpu_model']}  load {load_before[0]:.2f} "
        f"→ {os.getloadavg()[0]:.2f}  RLIMIT_NOFILE gateway {gw_nofile[0]}\n"
    )
    print_table(rows)
    i = meta["idle"]
    print(
        f"\nidle: opened {idle.opened:,}/{n:,} in {idle.open_seconds:.1f} s; gateway RSS "
        f"{i['gateway_rss_mib'][0]} → {i['gateway_rss_mib'][1]} MiB (after one echo each "
        f"{i['gateway_rss_mib'][2]} MiB), USS {i['gateway_uss_mib'][0]} → "
        f"{i['gateway_uss_mib'][1]} MiB; Node RSS {i['node_rss_mib'][0]} → "
        f"{i['node_rss_mib'][1]} MiB; this client {client_kib:.1f} KiB/conn"
    )
    for x in (direct, via_gw):
        print(
            f"relay {x.name:>7}: {x.received:,}/{x.sent:,} echoed, {x.rate:,.0f} msg/s, RTT p50 "
            f"{x.p50:.3f} p99 {x.p99:.3f} p99.9 {x.p999:.3f} max {x.max:.1f} ms; send lag p99 "
            f"{x.lag_p99:.2f} ms; server CPU {x.server_cpu_us:.0f} µs/msg, waited for a CPU "
            f"{x.runq_share * 1000:.0f} ms/s"
        )
    print(
        f"relay: {meta['relay']['slices']}; client CPU {run.client_cpu} of a core per process, "
        f"waited for a CPU {[round(q * 1000) for q in run.client_runq]} ms/s; gateway idle CPU "
        f"{run.idle_cpu * 100:.2f} % of a core"
    )
    for line in idle.tracemalloc_top:
        print(line)
    problems = [fd_note] if fd_note else []
    if idle.errors:
        problems.append(f"idle errors: {idle.errors}")
    if run.errors:
        problems.append(f"relay errors: {run.errors}")
    if not gw_alive:
        problems.append("the gateway exited during the run")
    if args.tracemalloc:
        problems.append("--tracemalloc: the gateway ran under tracemalloc, so its RSS, latency "
                        "and CPU figures are inflated; only the breakdown above is meant")  # fmt: skip
    # Waiting for a CPU at each wake-up is normal with client, gateway and Node on 2 cores
    # (~0.2 s/s on a quiet 2-core VM); well above that, other load is in the figures.
    if via_gw.runq_share > 0.3:
        problems.append(
            f"CPU contention: the gateway waited for a CPU {via_gw.runq_share * 1000:.0f} ms per "
            f"second of its slices (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
            "CPUs); other load inflates its latency figures"
        )
    if not rate_ok:
        problems.append("the client did not reach the target rate (try --clients 2)")
    if max(direct.lag_p99, via_gw.lag_p99) > 5.0:  # the loop's timers tick by 1 ms
        problems.append("the client fell behind its schedule (send lag p99 > 5 ms)")
    if problems:
        print("\nWARNING: " + "\nWARNING: ".join(problems))
        if idle.errors or not gw_alive:
            print(f"gateway access log statuses: {statuses}; gateway stderr (tail):\n{gw_log}")
    # A --tracemalloc run's latency and CPU figures are tracemalloc's: keep them apart.
    out = RESULTS / ("websocket-tracemalloc.json" if args.tracemalloc else "websocket.json")
    data = {"name": "websocket", "rows": rows, "meta": meta}
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
