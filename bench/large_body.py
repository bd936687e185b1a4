"""Large bodies: 100 MiB streamed through the gateway, against nginx and Node in one run.

Target: **100 MiB streamed through at ≥ 80 % of nginx's throughput, with the gateway's memory
growth ≤ 20 MiB** (for a download and for an upload).

Run it::

    .venv/bin/python bench/large_body.py            # 100 MiB, best of 3 transfers (~15 s)
    .venv/bin/python bench/large_body.py --quick    # smoke run: 20 MiB, 1 transfer
    .venv/bin/python bench/large_body.py --profile  # then py-spy the gateway on both paths
    # knobs: --mib N, --rounds N, --client auto|socket|curl, --nginx-buffer 64k

``--profile`` needs ``.venv/bin/py-spy`` (``.venv/bin/pip install py-spy``): it records the
gateway at 250 Hz while it repeats downloads, then uploads (8 s each, 3 s with --quick),
prints the top frames and leaves the raw stacks in
``bench/results/profile-large_body-{download,upload}.txt``.

nginx comes from apt (``apt-get install -y nginx``, as ``bench/run`` does). Every
process started here (Node, nginx, the gateway, py-spy) runs in its own process group and is
stopped on exit, on error and on Ctrl-C (``bench.harness.spawn`` / ``stop_all``).

Method. One Node ``http`` server (``node -e``, inline below) is the upstream:
``GET /big?mib=N`` streams N MiB of a repeated 256 KiB buffer with a Content-Length, chunk by
chunk, waiting for ``drain`` whenever ``write()`` says so (backpressure); ``POST /sink``
consumes the request body and answers ``{"bytes": n}``. Three targets in front of / beside it,
all on 127.0.0.1, one process (worker) each:

``node``     the Node server answered directly (the ceiling: no proxy at all)
``nginx``    nginx, 1 worker, ``upstream { keepalive 64; }``, HTTP/1.1 to Node, access log off,
             and **streaming both ways**: ``proxy_buffering off; proxy_request_buffering off;
             client_max_body_size 0;`` and nginx's default buffer sizes (see below)
``gateway``  ``chatgw serve`` (1 process, admin port, access log to a file in the temp dir)
             with routes ``/big`` and ``/sink`` to the Node, ``body_limit: 1GiB``, 300 s
             timeouts (the routes.yaml is written into the temp dir)

For each round, each target: one download (``GET /big``) then one upload (``POST /sink``,
streamed from the client in 1 MiB slices of one reused buffer with a Content-Length, never
built in memory). The client is either a raw blocking-socket HTTP/1.1 client in this process
(``recv_into`` a reused 1 MiB buffer; the body length is checked, its first bytes compared
with the pattern, the upload's byte count read back from the answer) or ``curl``
(``-o /dev/null``; uploads ``-T`` a file of the pattern in the temp dir with ``Expect:`` off).
``--client auto`` (default) times both against Node directly first and takes, per direction,
the faster one for all three targets, so the client is not the bottleneck.

Figures, per target and direction:

* **throughput** MiB/s: body bytes / client wall time from connect to the last byte (curl:
  its ``time_total``); the best of the rounds (3, or 1 with --quick).
* **memory growth** MiB: the server's RSS (the process and its children, e.g. nginx's
  worker) is sampled every 20 ms by a thread (psutil) during the transfer, and the kernel's
  peak (``VmHWM``, reset just before the transfer through ``/proc/PID/clear_refs``) is read
  after it, so a peak between two samples is not missed; growth = peak RSS − RSS just before
  the transfer (the larger of the two peaks; the JSON keeps both); the worst of the rounds. One small (1 MiB)
  download and upload per target warm each path first, so the first request's one-time
  allocations are not counted as growth. A server that buffered a whole 100 MiB body would
  show ~100 MiB here; a streaming one shows its buffers (socket read chunks, queues).
* **CPU s** per transfer: the server's CPU time (process and children, all threads, from
  ``/proc/PID/task/TID/schedstat`` in ns; psutil's 10 ms ticks as a fallback) over the
  transfer (for the proxies, the proxy alone: Node's is separate); the median of the rounds.

Ratios: gateway / nginx throughput, PASS at ≥ 0.80; gateway memory growth PASS at ≤ 20 MiB.
JSON to ``bench/results/large_body.json`` (``{"name", "rows": [{"figure", "value", "unit",
"reference", "ref_value", "target", "pass"}], "meta"}``) for other scripts to merge; figure
names carry the body size ("100 MiB download: gateway throughput"; "20 MiB …" with --quick),
``meta.figures`` every transfer. On a shared 2-core box the client, the proxy and Node share
two cores with whatever else runs: throughput moves from run to run, CPU seconds much less.

The nginx reference. With ``proxy_buffering off`` nginx relays through one buffer of
``proxy_buffer_size`` (default one page, 4 KiB on x86-64) and, with
``proxy_request_buffering off``, reads uploads into ``client_body_buffer_size`` (8 KiB): a
read and a write system call per 4 or 8 KiB, so stock streaming nginx spends more CPU per MiB
than the gateway (which moves ~250 KiB per read). ``--nginx-buffer 256k`` sets those buffers
(and ``proxy_buffers 4 256k``, ``proxy_busy_buffers_size 256k``) for the stricter comparison
with a tuned nginx; the verdicts always use the nginx of the run.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# bench/harness.py's helpers, imported by name rather than with ``from bench.harness import``:
# mypy follows a ``from`` import and would report harness.py's own type errors against this
# file. The annotations keep the call sites checked.
_harness = importlib.import_module("bench.harness")
from bench.common import free_ports, row, run_meta, summarise_stacks  # noqa: E402

spawn: Callable[..., psutil.Process] = _harness.spawn  # own process group; stop_all stops it
stop_all: Callable[[], None] = _harness.stop_all
free_port: Callable[[], int] = _harness.free_port
wait_ready: Callable[..., None] = _harness.wait_ready
cpu_seconds: Callable[[list[psutil.Process]], float] = _harness.cpu_seconds

MiB = 1024 * 1024
NODE_CHUNK = 256 * 1024  # the Node upstream's write size
CLIENT_BUF = 1 * MiB  # the socket client's recv_into buffer and upload slice
SAMPLE_S = 0.020  # RSS sampling period
SOCK_TIMEOUT = 120.0
TARGET_SHARE = 0.80
TARGET_GROWTH_MIB = 20.0
RESULTS = ROOT / "bench" / "results"

NODE_UPSTREAM = r"""
const http = require('http');
const CHUNK = Number(process.env.BENCH_CHUNK);
const buf = Buffer.alloc(CHUNK);
for (let i = 0; i < CHUNK; i++) buf[i] = i & 255;
const s = http.createServer((q, r) => {
  const u = new URL(q.url, 'http://x');
  if (q.method === 'GET' && u.pathname === '/big') {
    q.resume();
    const total = Math.round(Number(u.searchParams.get('mib') || '100') * 1048576);
    r.writeHead(200, {'content-type': 'application/octet-stream', 'content-length': total});
    let left = total;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK);
        left -= n;
        if (!r.write(n === CHUNK ? buf : buf.subarray(0, n))) {
          r.once('drain', pump);
          return;
        }
      }
      r.end();
    };
    pump();
  } else if (q.method === 'POST' && u.pathname === '/sink') {
    let n = 0;
    q.on('data', (c) => { n += c.length; });
    q.on('end', () => {
      const b = JSON.stringify({bytes: n});
      r.writeHead(200, {'content-type': 'application/json', 'content-length': b.length});
      r.end(b);
    });
  } else {
    q.resume();
    const b = u.pathname === '/health' ? '{"status":"ok"}' : '{"error":"not found"}';
    r.writeHead(u.pathname === '/health' ? 200 : 404,
                {'content-type': 'application/json', 'content-length': b.length});
    r.end(b);
  }
});
s.keepAliveTimeout = 60000;
s.requestTimeout = 0;
s.listen(Number(process.env.BENCH_PORT), '127.0.0.1', () => console.log('ready'));
"""

# harness.py's nginx, streaming both ways (and ``--nginx-buffer`` sizes)
NGINX_SERVER = "\n        client_max_body_size 0;"
NGINX_LOCATION = """
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;"""

ROUTES_YAML = """
settings:
  backend_header: true
  access_log: true
defaults:
  timeout: 300s
  body_limit: 1GiB
  sticky: none
upstreams:
  node:
    url: http://127.0.0.1:{node_port}
    connect_timeout: 2s
    read_timeout: 300s
    pool_size: 16
routes:
  - name: big
    match: {{path: /big, methods: [GET]}}
    legacy: node
    timeout: 300s
    body_limit: 1GiB
  - name: sink
    match: {{path: /sink, methods: [POST]}}
    legacy: node
    timeout: 300s
    body_limit: 1GiB
"""

TARGETS = ("node", "nginx", "gateway")
LABELS = {
    "node": "Node directly",
    "nginx": "nginx (1 worker, streaming)",
    "gateway": "gateway (chatgw serve, 1 process)",
}
DIRECTIONS = ("download", "upload")


def pattern(n: int) -> bytes:
    """The bytes Node sends: 0, 1, …, 255, 0, 1, … (a 256 KiB buffer repeated)."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# -- clients ---------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class Transfer:
    nbytes: int
    seconds: float

    @property
    def mib_s(self) -> float:
        return self.nbytes / MiB / max(self.seconds, 1e-9)


_BUF = bytearray(CLIENT_BUF)
_UPLOAD = memoryview(pattern(CLIENT_BUF))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCK_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a response head; returns status, headers (lower-case names), bytes after it."""
    data = bytearray()
    view = memoryview(_BUF)
    while True:
        n = sock.recv_into(view)
        if n == 0:
            raise BenchError(f"connection closed before the response head ({bytes(data[:200])!r})")
        data += view[:n]
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > 65536:
            raise BenchError("response head over 64 KiB")
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, bytes(data[end + 4 :])


def socket_download(port: int, path: str, expected: int) -> Transfer:
    view = memoryview(_BUF)
    t0 = time.perf_counter()
    with _connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        status, headers, rest = _read_head(sock)
        if status != 200:
            raise BenchError(f"GET {path}: status {status}: {rest[:200]!r}")
        if "content-length" not in headers:
            raise BenchError(f"GET {path}: no Content-Length in the answer ({headers})")
        length = int(headers["content-length"])
        if length != expected:
            raise BenchError(f"GET {path}: Content-Length {length}, expected {expected}")
        head = rest[:4096]
        got = len(rest)
        while got < length:
            n = sock.recv_into(view, min(CLIENT_BUF, length - got))
            if n == 0:
                raise BenchError(f"GET {path}: closed after {got} of {length} bytes")
            if len(head) < 4096:
                head += bytes(view[: min(n, 4096 - len(head))])
            got += n
    seconds = time.perf_counter() - t0
    if head != pattern(len(head)):
        raise BenchError(f"GET {path}: body does not start with the pattern")
    return Transfer(got, seconds)


def socket_upload(port: int, path: str, total: int) -> Transfer:
    t0 = time.perf_counter()
    with _connect(port) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        left = total
        while left > 0:
            n = min(left, CLIENT_BUF)
            sock.sendall(_UPLOAD[:n])
            left -= n
        status, headers, body = _read_head(sock)
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    seconds = time.perf_counter() - t0
    _check_sink(path, status, body, total)
    return Transfer(total, seconds)


def _check_sink(path: str, status: int, body: bytes, total: int) -> None:
    if status != 200:
        raise BenchError(f"POST {path}: status {status}: {body[:200]!r}")
    try:
        counted = json.loads(body)["bytes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"POST {path}: unexpected answer {body[:200]!r}") from exc
    if counted != total:
        raise BenchError(f"POST {path}: upstream counted {counted} bytes of {total}")


def curl_download(port: int, path: str, expected: int) -> Transfer:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=SOCK_TIMEOUT,
    ).stdout.split()  # fmt: skip
    if len(out) != 3 or out[0] != "200" or int(out[1]) != expected:
        raise BenchError(f"curl GET {path}: {out} (expected 200 and {expected} bytes)")
    return Transfer(int(out[1]), float(out[2]))


def curl_upload(port: int, path: str, total: int, src: Path, tmp: Path) -> Transfer:
    if src.stat().st_size != total:
        raise BenchError(f"{src}: size {src.stat().st_size}, expected {total}")
    answer = tmp / "curl-answer.json"
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-T", str(src), "-H", "Expect:",
         "-H", "Content-Type: application/octet-stream", "-o", str(answer),
         "-w", "%{http_code} %{size_upload} %{time_total}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=SOCK_TIMEOUT,
    ).stdout.split()  # fmt: skip
    if len(out) != 3:
        raise BenchError(f"curl POST {path}: {out}")
    _check_sink(path, int(out[0]), answer.read_bytes(), total)
    return Transfer(total, float(out[2]))


class Client:
    """Does one transfer of ``nbytes`` in ``direction`` with the chosen client."""

    def __init__(self, kinds: dict[str, str], tmp: Path) -> None:
        self.kinds = kinds  # direction → "socket" | "curl"
        self.tmp = tmp

    def upload_file(self, nbytes: int) -> Path:
        path = self.tmp / f"upload-{nbytes}.bin"
        if not path.exists():
            with open(path, "wb") as f:
                left = nbytes
                while left > 0:
                    n = min(left, CLIENT_BUF)
                    f.write(_UPLOAD[:n])
                    left -= n
        return path

    def run(self, direction: str, port: int, nbytes: int, kind: str | None = None) -> Transfer:
        kind = kind or self.kinds[direction]
        mib = nbytes / MiB
        if direction == "download":
            path = f"/big?mib={mib:g}"
            if kind == "curl":
                return curl_download(port, path, nbytes)
            return socket_download(port, path, nbytes)
        if kind == "curl":
            return curl_upload(port, "/sink", nbytes, self.upload_file(nbytes), self.tmp)
        return socket_upload(port, "/sink", nbytes)


# -- memory sampling -------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the summed RSS of ``procs`` (and their children) every :data:`SAMPLE_S`.

    A transfer of 100 MiB at 1 GiB/s lasts ~100 ms, a handful of samples, so the kernel's own
    peak is read too: ``VmHWM`` in ``/proc/PID/status``, reset to the current RSS before the
    transfer by writing ``5`` to ``/proc/PID/clear_refs`` (Linux ≥ 4.0; needs the process's
    owner or root). ``peak`` is the larger of the two; ``hwm`` is None where the reset failed.
    """

    def __init__(self, procs: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.procs = [q for p in procs for q in (p, *p.children(recursive=True))]
        self.halt = threading.Event()
        self.hwm_reset = all(_reset_hwm(p.pid) for p in self.procs)
        self.before = self.sample()
        self.peak = self.before
        self.sampled_peak = self.before
        self.hwm: int | None = None
        self.samples = 1

    def sample(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_S):
            self.sampled_peak = max(self.sampled_peak, self.sample())
            self.samples += 1

    def finish(self) -> None:
        self.halt.set()
        self.join()
        self.sampled_peak = max(self.sampled_peak, self.sample())
        self.samples += 1
        self.peak = self.sampled_peak
        if self.hwm_reset:
            # Summed over processes (nginx: master + worker): an upper bound of their peak.
            hwms = [_vm_hwm(p.pid) for p in self.procs]
            if all(h is not None for h in hwms):
                self.hwm = sum(h for h in hwms if h is not None)
                self.peak = max(self.peak, self.hwm)


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- targets and measurement -----------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    server: list[psutil.Process]
    upstream: list[psutil.Process] = field(default_factory=list)


@dataclass
class Sample:
    mib_s: float
    seconds: float
    cpu_s: float
    upstream_cpu_s: float | None
    rss_before_mib: float
    growth_mib: float  # the larger of the two below
    sampled_growth_mib: float  # from the 20 ms samples
    hwm_growth_mib: float | None  # from VmHWM (None: could not reset it)
    rss_samples: int


@dataclass
class Figure:
    target: str
    direction: str
    mib_s: float = 0.0  # best
    growth_mib: float = 0.0  # worst
    cpu_s: float = 0.0  # median
    upstream_cpu_s: float | None = None  # median
    samples: list[Sample] = field(default_factory=list)

    def summarise(self) -> None:
        s = self.samples
        self.mib_s = max(x.mib_s for x in s)
        self.growth_mib = max(x.growth_mib for x in s)
        self.cpu_s = statistics.median(x.cpu_s for x in s)
        ups = [x.upstream_cpu_s for x in s if x.upstream_cpu_s is not None]
        self.upstream_cpu_s = statistics.median(ups) if ups else None


_SCHEDSTAT = Path("/proc/self/schedstat").exists()


def cpu_time(procs: list[psutil.Process]) -> float:
    """CPU seconds of ``procs`` and their children, to the nanosecond: the sum over their
    threads of ``/proc/PID/task/TID/schedstat``'s time on CPU. psutil's user + system
    (``bench.harness.cpu_seconds``) counts 10 ms clock ticks, too coarse for a transfer of
    ~100 ms; it is the fallback where schedstat is missing."""
    if not _SCHEDSTAT:
        return cpu_seconds(procs)
    total = 0
    for p in procs:
        try:
            family = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in family:
            try:
                for tid in os.listdir(f"/proc/{q.pid}/task"):
                    with open(f"/proc/{q.pid}/task/{tid}/schedstat") as f:
                        total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return total / 1e9


def measure(t: Target, client: Client, direction: str, nbytes: int) -> Sample:
    sampler = RssSampler(t.server)
    c0, u0 = cpu_time(t.server), cpu_time(t.upstream)
    sampler.start()
    try:
        tr = client.run(direction, t.port, nbytes)
    finally:
        sampler.finish()
    c1, u1 = cpu_time(t.server), cpu_time(t.upstream)
    return Sample(
        mib_s=tr.mib_s, seconds=tr.seconds, cpu_s=c1 - c0,
        upstream_cpu_s=(u1 - u0) if t.upstream else None,
        rss_before_mib=sampler.before / MiB,
        growth_mib=(sampler.peak - sampler.before) / MiB,
        sampled_growth_mib=(sampler.sampled_peak - sampler.before) / MiB,
        hwm_growth_mib=None if sampler.hwm is None else (sampler.hwm - sampler.before) / MiB,
        rss_samples=sampler.samples,
    )  # fmt: skip


def start_targets(tmp: Path, nginx_buffer: str | None) -> dict[str, Target]:
    node_port = free_port()
    node = spawn(
        ["node", "-e", NODE_UPSTREAM],
        env={"BENCH_PORT": str(node_port), "BENCH_CHUNK": str(NODE_CHUNK)},
        log=tmp / "node.log",
    )
    wait_ready(f"http://127.0.0.1:{node_port}/health", node, tmp / "node.log")
    targets = {"node": Target("node", node_port, [node])}

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("large_body: nginx missing: apt-get update && apt-get install -y nginx")
    port = free_port()
    conf = tmp / "nginx.conf"
    buffers = ""
    if nginx_buffer:
        buffers = (
            f"\n            proxy_buffer_size {nginx_buffer};"
            f"\n            proxy_buffers 4 {nginx_buffer};"
            f"\n            proxy_busy_buffers_size {nginx_buffer};"
            f"\n            client_body_buffer_size {nginx_buffer};"
        )
    conf.write_text(
        _harness.NGINX_CONF.format(
            tmp=tmp, port=port, node_port=node_port, server_extra=NGINX_SERVER,
            location_extra=NGINX_LOCATION + buffers,
        )
    )  # fmt: skip
    proc = spawn(
        [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")],
        log=tmp / "nginx.log",
    )
    wait_ready(f"http://127.0.0.1:{port}/health", proc, tmp / "nginx.log")
    targets["nginx"] = Target("nginx", port, [proc], [node])

    port, admin = free_ports(2)
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES_YAML.format(node_port=node_port))
    # As bench/harness.py: the access log is the gateway's stdout, redirected to a file.
    proc = spawn(
        ["sh", "-c", 'exec "$0" "$@" >"$BENCH_ACCESS_LOG_FILE" 2>"$BENCH_GW_ERR"',
         str(ROOT / ".venv" / "bin" / "chatgw"), "serve", "--config", str(routes),
         "--host", "127.0.0.1", "--port", str(port), "--admin-host", "127.0.0.1",
         "--admin-port", str(admin)],
        env={"PYTHONPATH": str(ROOT), "CHATGW_CONTROL_PREFIX": f"chatgw-bench-large-{os.getpid()}:",
             "BENCH_ACCESS_LOG_FILE": str(tmp / "gateway-access.log"),
             "BENCH_GW_ERR": str(tmp / "gateway.log")},
        log=tmp / "gateway.log",
    )  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}/health", proc, tmp / "gateway.log")
    targets["gateway"] = Target("gateway", port, [proc], [node])
    return targets


def choose_client(requested: str, tmp: Path, node: Target, nbytes: int) -> dict[str, Any]:
    """Per direction, the faster of the socket client and curl against Node directly."""
    have_curl = shutil.which("curl") is not None
    if requested == "curl" and not have_curl:
        sys.exit("large_body: --client curl, but curl is not installed")
    if requested != "auto":
        return {"kinds": dict.fromkeys(DIRECTIONS, requested), "calibration": None}
    if not have_curl:
        return {"kinds": dict.fromkeys(DIRECTIONS, "socket"), "calibration": "curl missing"}
    probe = Client({}, tmp)
    kinds: dict[str, str] = {}
    calibration: dict[str, dict[str, float]] = {}
    for direction in DIRECTIONS:
        speeds = {}
        for kind in ("socket", "curl"):
            speeds[kind] = max(
                probe.run(direction, node.port, nbytes, kind).mib_s for _ in range(2)
            )
        kinds[direction] = max(speeds, key=lambda k: speeds[k])
        calibration[direction] = {k: round(v, 1) for k, v in speeds.items()}
        print(
            f"client for {direction}: {kinds[direction]}  (against Node: socket "
            f"{speeds['socket']:.0f} MiB/s, curl {speeds['curl']:.0f} MiB/s)",
            file=sys.stderr,
        )
    return {"kinds": kinds, "calibration": calibration}


# -- profile ---------------------------------------------------------------------------------


def profile(
    t: Target, client: Client, direction: str, nbytes: int, seconds: float, log: Path
) -> dict[str, Any]:
    """py-spy (raw collapsed stacks, 250 Hz) on the gateway while it repeats ``direction``
    transfers for ``seconds``; top frames by own and total share of the samples."""
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        return {"error": "py-spy missing: .venv/bin/pip install py-spy"}
    raw = RESULTS / f"profile-large_body-{direction}.txt"
    rate = 250
    spy = spawn(
        [str(pyspy), "record", "--pid", str(t.server[0].pid), "--duration", f"{seconds:g}",
         "--rate", str(rate), "--format", "raw", "--output", str(raw), "--nonblocking"],
        log=log,
    )  # fmt: skip
    time.sleep(0.5)
    transfers, busy = 0, 0.0
    while spy.is_running() and spy.status() != psutil.STATUS_ZOMBIE:
        busy += client.run(direction, t.port, nbytes).seconds
        transfers += 1
    spy.wait(timeout=60)
    summary = summarise_stacks(raw)
    samples = summary["samples"]
    return {
        "samples": samples,
        "transfers": transfers,
        # py-spy leaves out idle samples (the loop waiting in epoll): samples over the
        # samples it would take in the time transfers ran ≈ how busy the gateway's thread was
        "busy_share": round(samples / max(rate * busy, 1), 3),
        "self": summary["self"],
        "total": summary["total"],
        "file": str(raw),
    }


# -- report ----------------------------------------------------------------------------------


def report(figs: dict[tuple[str, str], Figure], mib: float) -> list[dict[str, Any]]:
    head = ("direction", "target", "MiB/s", "of nginx", "mem growth MiB", "CPU s", "Node CPU s",
            "rounds MiB/s")  # fmt: skip
    table = [head]
    for direction in DIRECTIONS:
        ref = figs[("nginx", direction)].mib_s
        for name in TARGETS:
            f = figs[(name, direction)]
            table.append((
                direction, LABELS[name], f"{f.mib_s:,.0f}",
                f"{f.mib_s / ref:.2f}" if name != "nginx" else "1.00",
                f"{f.growth_mib:.1f}", f"{f.cpu_s:.3f}",
                "–" if f.upstream_cpu_s is None else f"{f.upstream_cpu_s:.3f}",
                " ".join(f"{s.mib_s:.0f}" for s in f.samples),
            ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])]
                        + [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]))  # fmt: skip
        if i == 0:
            print("  ".join("-" * w for w in widths))

    rows = []
    size = f"{mib:g} MiB"
    verdicts = []
    for direction in DIRECTIONS:
        nd, ng, gw = (figs[(n, direction)] for n in TARGETS)
        share = gw.mib_s / ng.mib_s
        ok_tp = share >= TARGET_SHARE
        ok_mem = gw.growth_mib <= TARGET_GROWTH_MIB
        rows.append(row(f"{size} {direction}: gateway throughput", gw.mib_s, "MiB/s", "≥ 80 % of nginx", reference="nginx", ref_value=ng.mib_s, ok=ok_tp))  # fmt: skip
        rows.append(row(f"{size} {direction}: gateway memory growth", gw.growth_mib, "MiB", "≤ 20 MiB", reference=None, ref_value=None, ok=ok_mem))  # fmt: skip
        verdicts.append((ok_tp, f"{direction}: gateway / nginx throughput {share:.2f} (≥ 0.80)"))
        verdicts.append((ok_mem, f"{direction}: gateway memory growth {gw.growth_mib:.1f} MiB "
                                 f"(≤ {TARGET_GROWTH_MIB:g} MiB; nginx {ng.growth_mib:.1f})"))  # fmt: skip
    for direction in DIRECTIONS:
        nd, ng, gw = (figs[(n, direction)] for n in TARGETS)
        rows.append(row(f"{size} {direction}: gateway CPU per transfer", gw.cpu_s, "s", "–", reference="nginx", ref_value=ng.cpu_s, ok=None))  # fmt: skip
        rows.append(row(f"{size} {direction}: nginx memory growth", ng.growth_mib, "MiB", "–", reference=None, ref_value=None, ok=None))  # fmt: skip
        rows.append(row(f"{size} {direction}: Node direct throughput", nd.mib_s, "MiB/s", "–", reference=None, ref_value=None, ok=None))  # fmt: skip
    print()
    for ok, text in verdicts:
        print(f"{'PASS' if ok else 'MISS'}  {text}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="20 MiB, 1 transfer (smoke run)")
    ap.add_argument("--mib", type=float, help="body size in MiB (default 100, --quick 20)")
    ap.add_argument("--rounds", type=int, help="transfers per target and direction (3, quick 1)")
    ap.add_argument("--client", choices=["auto", "socket", "curl"], default="auto")
    ap.add_argument("--nginx-buffer", help="nginx proxy_buffer_size, proxy_buffers 4 ×, "
                    "proxy_busy_buffers_size and client_body_buffer_size (default: nginx's "
                    "own, 4k / 8k on x86-64)")  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="then py-spy the gateway")
    args = ap.parse_args()
    mib = args.mib or (20.0 if args.quick else 100.0)
    rounds = args.rounds or (1 if args.quick else 3)
    nbytes = int(mib * MiB)

    load_before = os.getloadavg()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(stop_all)
    RESULTS.mkdir(exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="chatgw-bench-large-") as d:
        tmp = Path(d)
        try:
            targets = start_targets(tmp, args.nginx_buffer)
            chosen = choose_client(args.client, tmp, targets["node"], nbytes)
            client = Client(chosen["kinds"], tmp)
            for t in targets.values():  # warm each path; also checks every answer once
                for direction in DIRECTIONS:
                    client.run(direction, t.port, 1 * MiB)
            figs = {(n, d): Figure(n, d) for n in TARGETS for d in DIRECTIONS}
            for rnd in range(rounds):
                for direction in DIRECTIONS:
                    for name in TARGETS:
                        print(f"round {rnd + 1}/{rounds}: {direction} {mib:g} MiB via {name} ...",
                              file=sys.stderr, flush=True)  # fmt: skip
                        figs[(name, direction)].samples.append(
                            measure(targets[name], client, direction, nbytes)
                        )
            for f in figs.values():
                f.summarise()
            meta: dict[str, Any] = {
                **run_meta(load_before, "node", "nginx"),
                "quick": args.quick,
                "body_mib": mib,
                "rounds": rounds,
                "client": chosen["kinds"],
                "client_calibration_mib_s": chosen["calibration"],
                "node_write_chunk": NODE_CHUNK,
                "nginx_streaming": "proxy_buffering off; proxy_request_buffering off; "
                                   "client_max_body_size 0; upstream keepalive 64; HTTP/1.1",
                "nginx_buffer": args.nginx_buffer or "nginx default",
                "gateway": "chatgw serve, 1 process, access log on (to a file), body_limit 1GiB",
                "rss_sample_s": SAMPLE_S,
                "aggregation": "throughput: best of rounds; memory growth: worst; CPU: median",
                "figures": {f"{n}/{d}": asdict(f) for (n, d), f in figs.items()},
            }  # fmt: skip
            print(f"\n{meta['date']}  {meta['cpus']} CPUs  load {os.getloadavg()[0]:.2f}  "
                  f"{mib:g} MiB, best of {rounds}  client {chosen['kinds']}  nginx streaming "
                  f"(proxy_buffering off, proxy_request_buffering off, client_max_body_size 0; "
                  f"buffers: {meta['nginx_buffer']})\n")  # fmt: skip
            rows = report(figs, mib)
            if args.profile:
                secs = 3.0 if args.quick else 8.0
                for direction in DIRECTIONS:
                    prof = profile(
                        targets["gateway"], client, direction, nbytes, secs, tmp / "py-spy.log"
                    )
                    meta[f"profile_{direction}"] = prof
                    print(f"\npy-spy, gateway during {direction}s: {prof.get('samples')} samples, "
                          f"{prof.get('transfers')} transfers, busy ≈ {prof.get('busy_share')}")  # fmt: skip
                    if "error" in prof:
                        print(f"  {prof['error']}")
                    for title in ("self", "total"):
                        print(f"top frames by {title} %:")
                        for pct, frame in prof.get(title, [])[:12]:
                            print(f"  {pct:5.1f}  {frame}")
            out = RESULTS / "large_body.json"
            data = {"name": "large_body", "rows": rows, "meta": meta}
            out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            print(f"\nwrote {out.relative_to(ROOT)}")
        finally:
            stop_all()
    return 0


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
