"""Shadow copies in a child process at lower CPU priority (``settings.shadow.isolation: process``).

In the default ``isolation: loop`` the copies run in the gateway's own event loop: a copy
of an in-process module call costs about half a primary request's CPU (bench/README.md),
and every step of it that runs when a primary request becomes ready delays that request.
With ``isolation: process`` the gateway keeps only the :class:`~.mirror.Tap` and the
hand-off: after the client's answer it appends the tap to a batch, and every
:data:`HANDOFF_DELAY` the batch's requests and primary answers go pickled in one frame to
the child's stdin; the outcomes come back from its stdout, summed per batch. The child
(``python -m gateway.shadow.worker``) runs at ``settings.shadow.nice``: by default ``idle``,
Linux's SCHED_IDLE class, so the kernel gives the copies only CPU that no other process
wants and preempts them as soon as a request handler wakes up; or a nice value 0..19. The
copies have a loop of their own. At saturation they wait, the worker's queue fills and
further copies are counted ``dropped``: the primary is never the one that gives way.

The child builds a :class:`~gateway.app.Gateway` of the same config (its own upstream pools
and its own instances of the modules: what they keep must live in Redis or MySQL, as it must
with ``chatgw serve --workers 2`` anyway), and runs :meth:`.Mirror._handle` on each copy.
Outcomes and samples come back to the parent's :class:`~.results.ShadowResults`, so
``/api/shadow``, ``gateway_shadow_results_total`` and the guard's mismatch rate read the same
as in loop isolation. ``gateway_shadow_worker_cpu_seconds_total`` is the child's own CPU:
the shadow side accounted apart from the serving process.

Failures stay on the shadow side:

* more than ``settings.shadow.queue`` copies in the child: the copy is counted ``dropped``;
* the child dies: its copies in flight are counted ``error``, it is started again (at most
  once a second; ``gateway_shadow_worker_restarts_total``) and copies submitted meanwhile
  are ``dropped``;
* the child does not start (a module that fails there, say): the gateway does not start
  either, with the child's reason, as when a module fails in the serving process.

Frames are ``<4-byte big-endian length><pickle>``, both ways, between a parent and the child
it started (pickle carries the route config and the bodies as they are; nothing else writes
to those pipes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import GatewayConfig

if TYPE_CHECKING:
    from .mirror import Mirror, Tap

log = logging.getLogger("chatgw.shadow")

_LEN = struct.Struct(">I")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 60.0  # seconds for the child to build its modules
RESTART_DELAY = 1.0
HANDOFF_DELAY = 0.002  # seconds a copy may wait to share the pipe write with others
# The scope keys a copy needs (the server's scope also holds its own objects: not sent).
SCOPE_KEYS = (
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
    "root_path", "headers", "client", "server",
)  # fmt: skip


class Batch:
    """Items gathered for ``delay`` seconds, then handed to ``out`` together: one pipe
    write (and one wake-up of the reader) per batch instead of one per item."""

    def __init__(self, delay: float, out: Callable[[list[Any]], None]) -> None:
        self.delay = delay
        self.out = out
        self.items: list[Any] = []
        self._armed = False

    def add(self, item: Any) -> None:
        self.items.append(item)
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        self._armed = False
        items, self.items = self.items, []
        if items:
            self.out(items)


class ShadowWorkerError(Exception):
    """The shadow worker process could not be started."""


def frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; raises ``asyncio.IncompleteReadError`` at the end."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))  # noqa: S301 - our own parent's frames


def tap_item(job: int, tap: Tap) -> tuple[Any, ...]:
    """One copy as a ``taps`` frame carries it."""
    scope = tap.scope
    return (
        job, tap.route.name, tap.primary, {k: scope[k] for k in SCOPE_KEYS if k in scope},
        tap.limit, tap.body, tap.headers, tap.status, tap.resp_raw, tap.resp_body,
    )  # fmt: skip


def handoff_frames(items: list[Any], failed: Callable[[int], None]) -> Iterator[bytes]:
    """The frames of one hand-off batch, in order: a frame made already (a config, the
    weights) as it is, and each run of copies (``(job, tap)``) as one ``taps`` frame.

    A copy is turned into data here, when the batch goes out, not when it is submitted:
    submitting is then a list append right after the client's answer, and one pickle of
    a batch costs less per copy than one per copy. A copy that cannot be pickled (a module
    that put an object in its answer's headers) is reported to ``failed`` by its job
    number; the rest of its run goes on without it."""
    run: list[tuple[int, Tap]] = []
    for item in items:
        if isinstance(item, bytes):
            yield from _taps_frames(run, failed)
            run = []
            yield item
        else:
            run.append(item)
    yield from _taps_frames(run, failed)


def _taps_frames(run: list[tuple[int, Tap]], failed: Callable[[int], None]) -> Iterator[bytes]:
    if not run:
        return
    try:
        whole = frame(("taps", [tap_item(job, tap) for job, tap in run]))
    except Exception:  # one of them cannot be pickled: find it (below), send the others
        whole = None
    if whole is not None:
        yield whole
        return
    for job, tap in run:
        try:
            one = frame(("taps", [tap_item(job, tap)]))
        except Exception:
            log.exception("shadow copy on route %s could not be handed over", tap.route.name)
            failed(job)
        else:
            yield one


def worker_config(config: GatewayConfig) -> GatewayConfig:
    """``config`` as the child runs it: copies in its own loop, no recording."""
    settings = config.settings
    return replace(
        config,
        settings=replace(settings, shadow=replace(settings.shadow, isolation="loop"), record=None),
    )


class _WorkerCollector(Collector):
    def __init__(self, worker: ShadowProcess) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        cpu = CounterMetricFamily(
            "gateway_shadow_worker_cpu_seconds",
            "CPU of the shadow worker process (isolation: process), user + system, as it "
            "reports it: the shadow side's cost, apart from the serving process",
        )
        cpu.add_metric([], self.worker.cpu_total)
        yield cpu
        flight = GaugeMetricFamily(
            "gateway_shadow_worker_in_flight",
            "Copies handed to the shadow worker process and not finished yet",
        )
        flight.add_metric([], len(self.worker.in_flight))
        yield flight
        restarts = CounterMetricFamily(
            "gateway_shadow_worker_restarts",
            "Times the shadow worker process died and was started again",
        )
        restarts.add_metric([], self.worker.restarted)
        yield restarts


class _Pipes(asyncio.SubprocessProtocol):
    """The child's stdout, cut into frames as it arrives (no task wakes up per frame)."""

    def __init__(self, owner: ShadowProcess) -> None:
        self.owner = owner
        self.buf = bytearray()
        loop = asyncio.get_running_loop()
        self.first: asyncio.Future[Any] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self.buf
        buf += data
        start, size = 0, len(buf)
        while size - start >= _LEN.size:
            (n,) = _LEN.unpack_from(buf, start)
            if size - start - _LEN.size < n:
                break
            obj = pickle.loads(buf[start + _LEN.size : start + _LEN.size + n])  # noqa: S301
            start += _LEN.size + n
            if not self.first.done():
                self.first.set_result(obj)
            else:
                self.owner._apply(obj)
        del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        # the child has exited and its pipes are closed: every frame it wrote is in
        if not self.first.done():
            self.first.set_result(("failed", f"exited with {self._returncode()}"))
        if not self.finished.done():
            self.finished.set_result(None)
        self.owner._exited(self)

    def _returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport is not None else None


class ShadowProcess:
    """The parent's handle on one shadow worker process (started by :class:`.Mirror`)."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.pipes: _Pipes | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.in_flight: dict[int, str] = {}  # job -> route name
        self._jobs = itertools.count(1)
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None
        self._out = Batch(HANDOFF_DELAY, self._write_frames)
        self.cpu_done = 0.0  # CPU of earlier (dead) children
        self.cpu_now = 0.0  # the running child's, as it last reported
        self.restarted = 0  # gateway_shadow_worker_restarts_total
        self.gc: dict[str, Any] = {}  # the child's collector settings, as it reported them
        mirror.gateway.metrics.registry.register(_WorkerCollector(self))

    @property
    def cpu_total(self) -> float:
        return self.cpu_done + self.cpu_now

    @property
    def pid(self) -> int | None:
        pipes = self.pipes
        return pipes.transport.get_pid() if pipes and pipes.transport else None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the child and wait until its modules are up; ShadowWorkerError if not."""
        self._stopping = False
        gateway = self.mirror.gateway
        settings = gateway.table.config.settings.shadow
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        loop = asyncio.get_running_loop()
        transport, pipes = await loop.subprocess_exec(
            lambda: _Pipes(self), sys.executable, "-m", "gateway.shadow.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, env=env,
        )  # fmt: skip
        stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))  # uvloop's too
        start = ("start", worker_config(gateway.table.config), dict(gateway.env), settings.nice)
        stdin.write(frame(start))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                first = await pipes.first
        except TimeoutError:
            first = ("failed", f"no answer within {START_TIMEOUT:.0f} s")
        if first[0] != "ready":
            transport.close()  # kills it if it still runs
            await pipes.finished
            raise ShadowWorkerError(f"the shadow worker process did not start: {first[1]}")
        self.pipes, self.stdin = pipes, stdin
        self.gc = {"threshold": list(first[2]), "frozen": first[3]}
        self.cpu_now = 0.0
        self.send_weights()
        log.info("shadow worker process %d started (nice %s)", transport.get_pid(), settings.nice)

    async def stop(self) -> None:
        """Let the child finish the copies it has (up to the shadow timeout), then end it."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        pipes, stdin = self.pipes, self.stdin
        if pipes is None or stdin is None:
            return
        self._out.flush()
        stdin.close()  # the child's signal to finish
        timeout = self.mirror.gateway.table.config.settings.shadow.timeout + 5
        try:
            await asyncio.wait_for(asyncio.shield(pipes.finished), timeout)
        except TimeoutError:
            log.error("shadow worker process %s did not stop within %.0f s", self.pid, timeout)
            assert pipes.transport is not None
            pipes.transport.close()
            await pipes.finished

    def configure(self, config: GatewayConfig) -> None:
        if self.stdin is not None:
            self._out.add(frame(("config", worker_config(config))))

    def send_weights(self) -> None:
        if self.stdin is not None:
            self._out.add(frame(("weights", dict(self.mirror.gateway.table.weights))))

    # ----------------------------------------------------------------- hot path

    def send(self, tap: Tap) -> bool:
        """Hand one copy to the child; False when it cannot take it now (count it dropped)."""
        if self.stdin is None:
            return False
        if len(self.in_flight) >= self.mirror.gateway.table.config.settings.shadow.queue:
            return False
        job = next(self._jobs)
        self.in_flight[job] = tap.route.name
        self._out.add((job, tap))
        return True

    def _write_frames(self, items: list[Any]) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.write(b"".join(handoff_frames(items, self._not_handed)))

    def _not_handed(self, job: int) -> None:
        route = self.in_flight.pop(job, None)
        if route is not None:
            self.mirror.results.count(route, "error")

    # ----------------------------------------------------------------- outcomes

    def _apply(self, events: Iterable[tuple[Any, ...]]) -> None:
        results = self.mirror.results
        in_flight = self.in_flight
        for event in events:
            kind = event[0]
            if kind == "done":
                for job in event[1]:
                    in_flight.pop(job, None)
            elif kind == "counts":
                for (route, result), n in event[1].items():
                    results.count(route, result, n)
            elif kind == "sample":
                results.add_sample(event[1])
            elif kind == "cpu":
                self.cpu_now = event[1]

    def _exited(self, pipes: _Pipes) -> None:
        if pipes is not self.pipes:
            return  # a child that never became the worker (a failed start)
        code = pipes._returncode()
        pid = self.pid
        self.pipes = self.stdin = None
        self.cpu_done += self.cpu_now
        self.cpu_now = 0.0
        lost = list(self.in_flight.values())
        self.in_flight.clear()
        for route in lost:
            self.mirror.results.count(route, "error")
        if self._stopping:
            return
        log.error(
            "shadow worker process %s exited with %s; %d copies in flight counted as errors; "
            "starting it again",
            pid, code, len(lost),
        )  # fmt: skip
        self.restarted += 1
        self._restart = asyncio.get_running_loop().create_task(
            self._start_again(), name="shadow-worker-restart"
        )

    async def _start_again(self) -> None:
        while not self._stopping:
            await asyncio.sleep(RESTART_DELAY)
            try:
                await self.start()
                return
            except ShadowWorkerError as exc:
                log.error("%s; trying again", exc)
