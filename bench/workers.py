"""Does ``chatgw serve --workers 2`` scale the proxied path? Measured honestly on 2 cores.

    .venv/bin/python bench/workers.py [--quick] [--duration 10] [--rounds 3] [--quota 0.3]
                                      [--no-quota] [--no-pin] [--connections 50]

Target (issue 2): *two workers scale the proxied path by ≥ 1.6× when the load generator
runs elsewhere*. This VM has two cores, and wrk, the Node upstream and two gateway workers
all want one, so "req/s with 2 workers / req/s with 1 worker" cannot show what two workers
do with a core each. Every run below is ``wrk -t2 -c50 --latency`` (after a warm-up) against
``chatgw serve --workers 1`` or ``--workers 2``, started as ``bench/run`` starts its
``proxied`` target: the same Node upstream (``bench.harness.NODE_UPSTREAM``), the same
routes.yaml (``/api/proxied`` → Node), metrics on, access log on (to a file). In every run
each worker's CPU seconds (psutil user + system of that worker process; with ``--workers
2`` the supervisor's own CPU is added to the fleet) and its requests (the delta of
``gateway_requests_total{route="proxied"}`` on its own admin port, ``admin_port + i``) are
read, and mid-run the client connections each worker holds (how SO_REUSEPORT hashed wrk's
connections). Three phases; each starts a 1-worker and a 2-worker gateway side by side and
alternates between them ``--rounds`` times (3; 1 with ``--quick``), rounds pooled:

(a) **Shared cores, plain req/s** (labelled *understated*): wrk, Node and the workers on
    both cores. The req/s ratio says little about scaling: the box is the limit.

(b) **Pinned — the figure held against the 1.6× target.** wrk and Node on CPU 0
    (``sched_setaffinity``, ``taskset -a -p``), the gateway on CPU 1 (``taskset -c 1
    chatgw serve``; the workers inherit it): the load generator *is* elsewhere, and the
    gateway's CPU is all on one core. One worker there has a dedicated core (its req/s
    is printed next to ``1e6 / its CPU µs per request``: a check of the capacity model).
    Two workers share that core; what is wanted from that run is each worker's cost per
    request while two run (extra context switches make it, if anything, pessimistic).
    Then, for a core per worker:

    * capacity of a worker = its requests / its CPU seconds (requests per CPU-second);
    * **projected scaling** = ``min_i(capacity_i / share_i) / capacity_1worker``, where
      ``share_i`` is worker *i*'s share of the requests: the busier worker saturates
      first, at ``capacity_i / share_i`` for the fleet (the ``1 / max_share``
      correction). Equal capacities and a 50/50 split give 2.0; 55/45 gives 1.82.
    * also printed: the same with the load split as the kernel hashed the connections
      (open loop: a client keeps its connection's worker), for wrk's 50 connections and
      for 400 connections (a probe: 400 idle keep-alive connections opened to the
      2-worker fleet, counted per worker). With 50 connections the hash split alone is
      ±7 % (one standard deviation), so that row moves a lot from run to run.

    Cross-check: the same projection from the shared-core runs of (a). There wrk and Node
    compete with the workers on both cores, which inflates CPU per request (cache and
    context switches, fewer requests per loop turn), so it leans low.

(c) **CPU quota: scaling measured, not projected** (skipped with ``--no-quota`` or when no
    writable cgroup cpu controller exists). Each gateway worker in its own cgroup with a
    CFS quota of ``--quota`` cores (0.3, 20 ms period): a fixed CPU budget per worker,
    i.e. "a core each", scaled down so that wrk and Node keep 2 − 2 × 0.3 = 1.4 cores and
    are not the limit. The req/s ratio is then the scaling, measured. It is valid only
    when every worker used ~all its budget (utilisation ≥ 90 %, printed with the CFS
    throttle counts); on a box loaded by other work it often is not, and the row says
    so. wrk's closed loop keeps both workers busy whatever the connection split; the
    open-loop variant is printed too. The cgroups are removed afterwards.

Why pinning, and which: two workers with a dedicated core each would leave no core for
wrk and Node, so pinning cannot *measure* 2-worker scaling here; the quota does that with
fractional cores. What pinning gives is a clean per-request cost: the gateway alone on a
core, the load generator and the upstream not competing with it — the condition the
target names — and a direct check that one worker with a core does ``1e6 / CPU µs``
req/s. Two workers pinned to one core vs one worker there should be ≈ 1.0× (a second
worker costs nothing per request); less is a cost the projection carries. Caveats: Node
is the bench's upstream, not the gateway's (its CPU per request is printed, not held
against the gateway); the machine is shared, so use ``--rounds`` and read CPU per
request rather than req/s.

Output: a table, and ``bench/results/workers.json``:
``{"name": "workers", "rows": [{"figure", "value", "unit", "reference", "ref_value",
"target", "pass"}], "meta": {...}}``. Only the headline projection has a PASS/MISS
(without ``--no-pin`` it is (b), with it the shared-core projection); the other rows are
the evidence. ``--quick``: 2 s runs, 1 round (smoke test).

Every process started here runs in its own process group and is stopped on exit, on error,
on SIGTERM/SIGHUP and on Ctrl-C (``bench.harness.stop_all``); the cgroups are removed.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import datetime
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, row, run_meta  # noqa: E402
from bench.harness import (  # noqa: E402
    BENCH_JWT_SECRET,
    BENCH_REDIS_URL,
    BODY,
    NODE_UPSTREAM,
    ROUTES_YAML,
    Wrk,
    cpu_seconds,
    free_port,
    spawn,
    stop_all,
    wait_ready,
    wrk,
)

CHATGW = str(ROOT / ".venv" / "bin" / "chatgw")
TARGET_SCALING = 1.6
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_PERIOD_US = 20_000
BALANCE_CONNECTIONS = 400

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# -- the gateway fleet ----------------------------------------------------------------------


@dataclass
class Fleet:
    workers_n: int
    top: psutil.Process  # `chatgw serve`: the supervisor, or with 1 worker the worker itself
    workers: list[psutil.Process]
    port: int
    admin_ports: list[int]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/proxied"


def _admin_ports(n: int) -> int:
    """A free port ``p`` such that ``p .. p+n-1`` are free too (``--workers`` uses them)."""
    for _ in range(100):
        p = free_port()
        if p + n > 65535:
            continue
        try:
            for i in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + i))
        except OSError:
            continue
        return p
    raise RuntimeError("no run of free admin ports")


def start_fleet(
    tmp: Path, node_port: int, n: int, tag: str, cpus: str | None = None, quota: bool = False
) -> Fleet:
    """``chatgw serve --workers n`` as ``bench/run`` starts it (env, access log to a file);
    with ``cpus``, under ``taskset -c cpus`` (the workers inherit the affinity). With
    ``quota`` (the workers are moved into cgroups with a CPU quota once up) busy polling is
    off, as a gateway started inside such a cgroup decides by itself (gateway/busypoll.py)."""
    port, admin = free_port(), _admin_ports(n)
    routes = tmp / "routes.yaml"
    if not routes.exists():
        routes.write_text(ROUTES_YAML.format(node_port=node_port))
    err = tmp / f"gateway-{tag}.log"
    prefix = ["taskset", "-c", cpus] if cpus else []
    argv = [*prefix, CHATGW, "serve", "--config", str(routes), "--host", "127.0.0.1",
            "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin),
            "--workers", str(n)]  # fmt: skip
    env = {
        "REDIS_URL": BENCH_REDIS_URL,
        "JWT_SECRET_KEY": BENCH_JWT_SECRET,
        # own control-plane namespace: other benches may run against the same Redis
        "CHATGW_CONTROL_PREFIX": f"chatgw-bench-workers-{os.getpid()}:",
        "CHATGW_EXTRA_MODULES": "bench=bench.bench_module:create_app",
        "CHATGW_DRAIN_SECONDS": "2",
        "PYTHONPATH": str(ROOT),
        "BENCH_ACCESS_LOG_FILE": str(tmp / f"gateway-{tag}-access.log"),
        "BENCH_GW_ERR": str(err),
        **({"CHATGW_BUSY_POLL_US": "0"} if quota else {}),
    }
    # The access log goes to the gateway's stdout (a file); stderr to its own file.
    top = spawn(
        ["sh", "-c", 'exec "$0" "$@" >"$BENCH_ACCESS_LOG_FILE" 2>"$BENCH_GW_ERR"', *argv],
        env=env,
        log=err,
    )
    admin_ports = [admin + i for i in range(n)]
    for a in admin_ports:
        wait_ready(f"http://127.0.0.1:{a}/health", top, err, timeout=40)
    wait_ready(f"http://127.0.0.1:{port}/api/proxied", top, err)
    workers = [top]
    if n > 1:
        deadline = time.monotonic() + 20
        while len(workers := top.children()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers expected, found {len(workers)}; see {err}")
            time.sleep(0.1)
        # worker i is the one serving admin port admin + i
        by_port = {}
        for w in workers:
            for c in w.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port in admin_ports:
                    by_port[c.laddr.port] = w
        workers = [by_port[a] for a in admin_ports]
    time.sleep(0.5)  # the client listener opens after the admin one
    return Fleet(n, top, workers, port, admin_ports, err)


def stop_fleet(f: Fleet) -> None:
    try:
        os.killpg(f.top.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        f.top.wait(timeout=20)
    except psutil.TimeoutExpired:
        try:
            os.killpg(f.top.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        f.top.wait(timeout=10)


def proxied_requests(admin_port: int) -> float:
    """``gateway_requests_total{route="proxied"}`` of one worker, all labels summed."""
    with _no_proxy.open(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_requests_total{") and 'route="proxied"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def client_connections(f: Fleet) -> list[int]:
    """Established client connections each worker holds on the client port."""
    out = []
    for w in f.workers:
        try:
            conns = w.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            conns = []
        out.append(
            sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == f.port)
        )
    return out


def own_cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


# -- CPU quota (cgroups) ---------------------------------------------------------------------


class Quota:
    """One cgroup per worker under a cgroup of this run, each with a CFS quota."""

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self.v1 = (CGROUP_V1 / "cpu.cfs_quota_us").exists()
        base = CGROUP_V1 if self.v1 else CGROUP_V2
        self.root = base / f"chatgw-bench-workers-{os.getpid()}"
        self.groups: list[Path] = []

    @staticmethod
    def available() -> str | None:
        """None when usable, else why not."""
        if os.geteuid() != 0:
            return "not root"
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            return None if os.access(CGROUP_V1, os.W_OK) else f"{CGROUP_V1} not writable"
        ctl = CGROUP_V2 / "cgroup.subtree_control"
        if ctl.exists() and "cpu" in ctl.read_text().split():
            return None if os.access(CGROUP_V2, os.W_OK) else f"{CGROUP_V2} not writable"
        return "no cgroup cpu controller (v1 cpu, or v2 with cpu in subtree_control)"

    def put(self, workers: list[psutil.Process], tag: str) -> list[Path]:
        self.root.mkdir(exist_ok=True)
        groups = []
        quota = int(self.cores * CGROUP_PERIOD_US)
        for i, w in enumerate(workers):
            g = self.root / f"{tag}-w{i}"
            g.mkdir()
            self.groups.append(g)
            if self.v1:
                (g / "cpu.cfs_period_us").write_text(str(CGROUP_PERIOD_US))
                (g / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (g / "cpu.max").write_text(f"{quota} {CGROUP_PERIOD_US}")
            (g / "cgroup.procs").write_text(str(w.pid))  # all its threads move with it
            groups.append(g)
        return groups

    @staticmethod
    def throttled(g: Path) -> int:
        for line in (g / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "nr_throttled":
                return int(v)
        return 0

    def cleanup(self) -> None:
        """Move anything left back to the parent, remove the groups (after stop_all)."""
        parent = self.root.parent
        for g in [*self.groups, self.root]:
            if not g.exists():
                continue
            for _ in range(50):
                try:
                    for pid in (g / "cgroup.procs").read_text().split():
                        try:
                            (parent / "cgroup.procs").write_text(pid)
                        except OSError:
                            pass
                    g.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        self.groups.clear()


# -- one measured run -----------------------------------------------------------------------


@dataclass
class Run:
    label: str
    workers_n: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    wrk_requests: int
    errors: int
    requests: list[float]  # per worker, from its /metrics
    cpu_s: list[float]  # per worker, user + system
    supervisor_cpu_s: float  # the --workers supervisor's own (0 with 1 worker)
    node_cpu_s: float
    conns: list[int]  # client connections per worker, mid-run
    throttled: list[int] = field(default_factory=list)  # CFS throttle events per worker

    @property
    def total(self) -> float:
        return max(sum(self.requests), 1.0)

    @property
    def fleet_cpu(self) -> float:
        return sum(self.cpu_s) + self.supervisor_cpu_s

    @property
    def cpu_us(self) -> float:
        return self.fleet_cpu / self.total * 1e6

    @property
    def node_cpu_us(self) -> float:
        return self.node_cpu_s / self.total * 1e6

    @property
    def req_shares(self) -> list[float]:
        return [r / self.total for r in self.requests]

    @property
    def conn_shares(self) -> list[float]:
        n = max(sum(self.conns), 1)
        return [c / n for c in self.conns]

    def capacities(self) -> list[float]:
        """Requests per CPU-second of each worker, the supervisor's CPU spread over them."""
        spread = self.fleet_cpu / max(sum(self.cpu_s), 1e-9)
        return [r / max(c * spread, 1e-9) for r, c in zip(self.requests, self.cpu_s, strict=True)]


def merge(rs: list[Run]) -> Run:
    """Rounds pooled: counts and CPU summed, req/s over the summed time, median latencies."""
    if len(rs) == 1:
        return rs[0]
    seconds = sum(r.seconds for r in rs)
    wrk_requests = sum(r.wrk_requests for r in rs)

    def add(xs: list[list[float]]) -> list[float]:
        return [sum(col) for col in zip(*xs, strict=True)]

    return Run(
        rs[0].label, rs[0].workers_n, seconds, wrk_requests / seconds,
        statistics.median(r.p50_ms for r in rs), statistics.median(r.p99_ms for r in rs),
        wrk_requests, sum(r.errors for r in rs),
        requests=add([r.requests for r in rs]), cpu_s=add([r.cpu_s for r in rs]),
        supervisor_cpu_s=sum(r.supervisor_cpu_s for r in rs),
        node_cpu_s=sum(r.node_cpu_s for r in rs),
        conns=[int(x) for x in add([[float(c) for c in r.conns] for r in rs])],
        throttled=[int(x) for x in add([[float(t) for t in r.throttled] for r in rs])],
    )  # fmt: skip


def project(one: Run, two: Run, shares: list[float]) -> float:
    """Scaling of the 2-worker fleet over 1 worker with a core per worker: each worker's
    capacity (requests per CPU-second) when two run, the fleet limited by the worker that
    saturates first given the load ``shares``, over the capacity of the worker alone."""
    cap1 = one.total / max(one.fleet_cpu, 1e-9)
    caps = two.capacities()
    return min(c / max(s, 1e-9) for c, s in zip(caps, shares, strict=True)) / cap1


def _wrk(url: str, conns: int, duration: str, cpus: set[int] | None) -> Wrk:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # this thread only; wrk inherits it
    return wrk(url, threads=2, conns=conns, duration=duration)


def measure(
    label: str,
    f: Fleet,
    node: psutil.Process,
    *,
    conns: int,
    seconds: float,
    warmup: float,
    wrk_cpus: set[int] | None = None,
    groups: list[Path] | None = None,
) -> Run:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_wrk, f.url, conns, f"{warmup:g}s", wrk_cpus).result()
        r0 = [proxied_requests(a) for a in f.admin_ports]
        c0 = [own_cpu(p) for p in f.workers]
        s0 = own_cpu(f.top) if f.workers_n > 1 else 0.0
        n0 = cpu_seconds([node])
        t0 = [Quota.throttled(g) for g in groups or []]
        job = pool.submit(_wrk, f.url, conns, f"{seconds:g}s", wrk_cpus)
        time.sleep(min(1.0, seconds / 2))
        held = client_connections(f)
        w = job.result()
        c1 = [own_cpu(p) for p in f.workers]
        s1 = own_cpu(f.top) if f.workers_n > 1 else 0.0
        n1 = cpu_seconds([node])
        t1 = [Quota.throttled(g) for g in groups or []]
        r1 = [proxied_requests(a) for a in f.admin_ports]
    return Run(
        label, f.workers_n, w.seconds, w.rps, w.p50_ms, w.p99_ms, w.requests, w.errors,
        requests=[b - a for a, b in zip(r0, r1, strict=True)],
        cpu_s=[b - a for a, b in zip(c0, c1, strict=True)],
        supervisor_cpu_s=s1 - s0, node_cpu_s=n1 - n0, conns=held,
        throttled=[b - a for a, b in zip(t0, t1, strict=True)],
    )  # fmt: skip


def balance_probe(f: Fleet, n: int) -> list[int]:
    """Open ``n`` idle keep-alive connections to the fleet; how many each worker accepted."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", f.port), timeout=5))
        deadline = time.monotonic() + 5
        held = client_connections(f)
        while sum(held) < n and time.monotonic() < deadline:
            time.sleep(0.2)
            held = client_connections(f)
        return held
    finally:
        for s in socks:
            s.close()


# -- report ---------------------------------------------------------------------------------


def print_runs(runs: list[Run]) -> None:
    head = ("run", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "Node µs/req", "requests/worker",
            "conns/worker", "CPU s/worker")  # fmt: skip
    lines = [head]
    for r in runs:
        lines.append((r.label, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{r.cpu_us:.0f}", f"{r.node_cpu_us:.0f}",
                      " / ".join(f"{x:.0f}" for x in r.requests),
                      " / ".join(str(x) for x in r.conns),
                      " / ".join(f"{x:.2f}" for x in r.cpu_s)))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                       zip(line[1:], widths[1:], strict=True)]))  # fmt: skip
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_rows(rows: list[dict[str, Any]]) -> None:
    print()
    w = max(len(r["figure"]) for r in rows)
    for r in rows:
        mark = {True: "PASS", False: "MISS", None: "    "}[r["pass"]]
        ref = f"  (vs {r['reference']}: {r['ref_value']:g})" if r["ref_value"] is not None else ""
        print(f"{mark}  {r['figure']:<{w}}  {r['value']:>10.3f} {r['unit']:<7} "
              f"[{r['target']}]{ref}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s runs (smoke test)")
    ap.add_argument("--duration", type=float, help="seconds per measured run (10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (50, as bench/run)")
    ap.add_argument("--quota", type=float, default=0.3, help="CPU quota per worker in (c)")
    ap.add_argument("--rounds", type=int, help="rounds per phase, pooled (3; --quick 1)")
    ap.add_argument("--no-quota", action="store_true", help="skip the CPU-quota runs")
    ap.add_argument("--no-pin", action="store_true", help="skip the taskset runs")
    args = ap.parse_args()
    seconds = args.duration or (2.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    conns = args.connections

    load_before = os.getloadavg()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    quota_why = "--no-quota" if args.no_quota else Quota.available()
    quota = Quota(args.quota) if quota_why is None else None
    if quota is not None:
        atexit.register(quota.cleanup)  # runs after stop_all (atexit is last in, first out)
    atexit.register(stop_all)
    ncpu = len(os.sched_getaffinity(0))
    pin_why = "--no-pin" if args.no_pin else (None if ncpu >= 2 else "fewer than 2 CPUs")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)

    runs: dict[str, Run] = {}
    rounds_rps: dict[str, list[int]] = {}
    balance: list[int] = []
    with tempfile.TemporaryDirectory(prefix="chatgw-workers-") as d:
        tmp = Path(d)
        try:
            node_port = free_port()
            node = spawn(["node", "-e", NODE_UPSTREAM],
                         env={"BENCH_BODY": BODY.decode(), "BENCH_PORT": str(node_port)},
                         log=tmp / "node.log")  # fmt: skip
            wait_ready(f"http://127.0.0.1:{node_port}/api/bench", node, tmp / "node.log")
            opts: dict[str, Any] = {"conns": conns, "seconds": seconds, "warmup": warmup}

            def phase(
                tag: str,
                label: str,
                cpus: str | None = None,
                wrk_cpus: set[int] | None = None,
                probe: bool = False,
            ) -> None:
                """Both fleets up at once; rounds alternate 1 worker, 2 workers."""
                fleets = {n: start_fleet(tmp, node_port, n, f"{tag}{n}", cpus, tag == "quota")
                          for n in (1, 2)}  # fmt: skip
                groups = {n: quota.put(f.workers, f"{tag}{n}") if tag == "quota" and quota
                          else None for n, f in fleets.items()}  # fmt: skip
                done: dict[int, list[Run]] = {1: [], 2: []}
                for rnd in range(args.rounds):
                    for n, f in fleets.items():
                        say(f"{label % n}: round {rnd + 1}/{args.rounds} ...")
                        done[n].append(measure(label % n, f, node, wrk_cpus=wrk_cpus,
                                               groups=groups[n], **opts))  # fmt: skip
                if probe:
                    say(f"SO_REUSEPORT balance: {BALANCE_CONNECTIONS} idle connections ...")
                    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                    for _ in range(args.rounds):
                        got = balance_probe(fleets[2], min(BALANCE_CONNECTIONS, limit // 2 - 50))
                        balance[:] = [a + b for a, b in zip(balance or [0, 0], got, strict=True)]
                for f in fleets.values():
                    stop_fleet(f)
                for n, rs in done.items():
                    runs[f"{tag}{n}"] = merge(rs)
                    if len(rs) > 1:
                        rounds_rps[f"{tag}{n}"] = [round(r.rps) for r in rs]

            # (a) + (b): shared cores
            phase("plain", "%d worker(s), shared cores", probe=True)
            # (c) a CPU quota per worker
            if quota is not None:
                phase("quota", f"%d worker(s), {args.quota:g} core each (quota)")
            # pinning: the gateway on the last CPU, wrk and Node on CPU 0
            if pin_why is None:
                gw_cpu = max(os.sched_getaffinity(0))
                subprocess.run(["taskset", "-a", "-cp", "0", str(node.pid)], check=True,
                               capture_output=True)  # fmt: skip
                phase("pin", f"%d worker(s) on CPU {gw_cpu} alone", cpus=str(gw_cpu),
                      wrk_cpus={0})  # fmt: skip
        finally:
            stop_all()
            if quota is not None:
                quota.cleanup()

    # -- figures ---------------------------------------------------------------------------
    one, two = runs["plain1"], runs["plain2"]
    p1, p2 = runs.get("pin1"), runs.get("pin2")
    q1, q2 = runs.get("quota1"), runs.get("quota2")
    probe = [b / sum(balance) for b in balance] if balance and sum(balance) else None
    # The headline: from the pinned runs when there are any (wrk + Node on one core, the
    # gateway on the other: the load generator *is* elsewhere), else from shared cores.
    base1, base2 = (p1, p2) if p1 and p2 else (one, two)
    where = "pinned: wrk + Node on CPU 0, gateway on CPU 1" if p1 else "shared cores"
    headline = project(base1, base2, base2.req_shares)
    ok = headline >= TARGET_SCALING
    ref: dict[str, Any] = {"reference": "1 worker, same method", "ref_value": 1.0}
    rows = [
        row(f"2 workers: projected scaling, a core per worker ({where}; CPU accounting, "
            "request balance)", headline, "×", f"≥ {TARGET_SCALING}×", ok=ok, **ref),
        row(f"… same, open loop: load split as SO_REUSEPORT hashed wrk's {conns} connections",
            project(base1, base2, base2.conn_shares), "×", "info", **ref),
    ]  # fmt: skip
    if probe:
        rows.append(row(f"… same, open loop: load split as SO_REUSEPORT hashed {sum(balance)} "
                        "connections", project(base1, base2, probe), "×", "info", **ref))  # fmt: skip
    if p1 and p2:
        rows.append(row("2 workers: projected scaling, same method on shared cores (wrk, Node "
                        "and both workers on both cores: contention inflates CPU/request)",
                        project(one, two, two.req_shares), "×", "cross-check", **ref))  # fmt: skip
    if q1 and q2:
        util = [c / (r.seconds * args.quota) for r in (q1, q2) for c in r.cpu_s]
        valid = (
            "valid: every worker used ≥ 90 % of its quota"
            if min(util) >= 0.9
            else f"NOT valid: a worker used only {min(util):.0%} of its quota"
        )
        q_open = min(r / q2.seconds / max(s, 1e-9) for r, s in zip(q2.requests, q2.conn_shares,
                     strict=True)) / (q1.total / q1.seconds)  # fmt: skip
        rows += [
            row(f"2 workers: measured scaling, CPU quota {args.quota:g} core per worker "
                "(closed loop, wrk)", q2.rps / q1.rps, "×",
                f"cross-check ({valid})", reference="1 worker, same quota, req/s",
                ref_value=q1.rps),
            row(f"… same, open loop: load split as SO_REUSEPORT hashed wrk's {conns} connections",
                q_open, "×", "info", **ref),
            row("quota runs: lowest worker utilisation of its quota", min(util), "share",
                "info (≥ 0.9: the quota was the limit, the measurement is valid)"),
        ]  # fmt: skip
    rows += [
        row("2 workers: req/s ratio on shared cores (understated: wrk + Node share the 2 "
            "cores)", two.rps / one.rps, "×", "info", reference="1 worker req/s",
            ref_value=one.rps),
        row("1 worker: req/s on shared cores", one.rps, "req/s", "info"),
        row("2 workers: req/s on shared cores", two.rps, "req/s", "info"),
        row("CPU µs/request 1 worker (shared cores)", one.cpu_us, "µs", "info"),
        row("CPU µs/request 2 workers (shared cores; fleet, supervisor included)", two.cpu_us,
            "µs", "info (equal to 1 worker = no contention penalty)",
            reference="CPU µs/request 1 worker", ref_value=one.cpu_us),
    ]  # fmt: skip
    if p1 and p2:
        rows += [
            row("CPU µs/request 1 worker (pinned)", p1.cpu_us, "µs", "info"),
            row("CPU µs/request 2 workers (pinned, sharing the core)", p2.cpu_us, "µs",
                "info (equal to 1 worker = no contention penalty)",
                reference="CPU µs/request 1 worker (pinned)", ref_value=p1.cpu_us),
            row("pinned: 1 worker alone on a core (wrk + Node on the other): req/s", p1.rps,
                "req/s", "check of the capacity model",
                reference="1e6 / its CPU µs per request", ref_value=1e6 / p1.cpu_us),
            row("pinned: the 1 worker's use of its core", p1.fleet_cpu / p1.seconds, "share",
                "info (≥ 0.9: nothing else took that core, the req/s check holds)"),
            row("pinned: 2 workers sharing that one core vs 1 worker on it", p2.rps / p1.rps,
                "×", "info (≈ 1: a second worker costs nothing)",
                reference="1 worker on that core, req/s", ref_value=p1.rps),
        ]  # fmt: skip
    rows += [
        row(f"request share of busier worker ({base2.label})", max(base2.req_shares), "share",
            "info (0.5 ideal)"),
        row(f"connection share of busier worker (wrk -c{conns}, {base2.label})",
            max(base2.conn_shares), "share", "info (0.5 ideal)"),
        row("Node upstream CPU µs/request (bench upstream, not the gateway's)",
            one.node_cpu_us, "µs", "info"),
    ]  # fmt: skip
    if probe:
        rows.append(row(f"connection share of busier worker ({sum(balance)} idle connections)",
                        max(probe), "share", "info (0.5 ideal)"))  # fmt: skip

    print(f"\n{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M}  {os.cpu_count()} CPUs "
          f"{cpu_model()}  load {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after  "
          f"wrk -t2 -c{conns} -d{seconds:g}s (warm-up {warmup:g}s) × {args.rounds} round(s)\n")  # fmt: skip
    print_runs(list(runs.values()))
    print_rows(rows)
    if quota_why:
        print(f"\n(c) CPU quota runs skipped: {quota_why}")
    if pin_why:
        print(f"pinned runs skipped: {pin_why}")
    if q1 and q2:
        print(f"quota runs: worker utilisation of the {args.quota:g}-core quota "
              + ", ".join(f"{c / (r.seconds * args.quota):.0%}" for r in (q1, q2) for c in r.cpu_s)
              + "; CFS throttle events " + ", ".join(str(t) for r in (q1, q2) for t in r.throttled))  # fmt: skip
    bad = [r.label for r in runs.values() if r.errors]
    if bad:
        print(f"WARNING: non-2xx or socket errors in: {', '.join(bad)}")
    print(f"\n{'PASS' if ok else 'MISS'}  two workers scale the proxied path by "
          f"≥ {TARGET_SCALING}× with the load generator elsewhere: {headline:.2f}× projected "
          f"({where}: requests per CPU-second of each worker with 2 running vs of 1 worker, "
          f"busier worker's request share {max(base2.req_shares):.2f}); "
          f"{two.rps / one.rps:.2f}× req/s on shared cores (understated)")  # fmt: skip

    meta = {
        **run_meta(load_before),
        "wrk": f"-t2 -c{conns} -d{seconds:g}s --latency (warm-up {warmup:g}s)",
        "quick": args.quick,
        "quota_cores_per_worker": args.quota if quota else None,
        "quota_skipped": quota_why,
        "pin_skipped": pin_why,
        "rounds": args.rounds,
        "rounds_rps": rounds_rps,
        "balance_probe_connections_per_worker": balance,
        "headline_from": where,
        "method": (
            "projected scaling = min_i(capacity_i / share_i) / capacity_1worker; capacity = "
            "requests (gateway_requests_total on each worker's admin port) per CPU-second "
            "(psutil user+system per worker; the supervisor's CPU spread over the workers); "
            "share_i = worker i's share of the requests. Measured during wrk -t2 -c50 runs "
            "of --workers 1 and --workers 2 with wrk + Node pinned to CPU 0 and the gateway "
            "to CPU 1 (the load generator elsewhere; a core per worker projected). "
            "Cross-checks: the same projection from runs on shared cores; the same wrk runs "
            "with a CFS CPU quota per worker (cgroup), measured; open-loop variants with the "
            "load split as SO_REUSEPORT hashed the connections."
        ),
        "runs": {k: {**asdict(r), "cpu_us": r.cpu_us, "node_cpu_us": r.node_cpu_us,
                     "req_shares": r.req_shares, "conn_shares": r.conn_shares,
                     "capacities": r.capacities()} for k, r in runs.items()},
    }  # fmt: skip
    out = ROOT / "bench" / "results" / "workers.json"
    out.write_text(
        json.dumps({"name": "workers", "rows": rows, "meta": meta}, indent=2, ensure_ascii=False)
        + "\n"
    )
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
