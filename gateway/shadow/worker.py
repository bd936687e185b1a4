"""The shadow worker process: ``python -m gateway.shadow.worker``, started by the gateway.

See :mod:`.process` for why and how. This side reads frames from stdin: ``start`` (the
config, the modules' environment, the nice value) once, then ``taps`` (copies to make),
``config`` (a reloaded config) and ``weights`` (the live split, for module-to-module calls);
the end of stdin means stop once the copies in hand are done. It writes frames of event
lists to stdout, one every :data:`RESULT_DELAY` at most: ``counts`` and ``sample`` (what
:class:`.results.ShadowResults` would have recorded; the counts summed per route and
result), ``done`` (the copies finished) and ``cpu`` (this process's CPU so far). Anything else
that writes to stdout (a stray print in a module) goes to stderr: fd 1 is pointed there once
the frame pipe has its own descriptor.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import signal
import sys
from typing import Any

import uvloop

from ..gc_tuning import apply_gc_threshold, freeze_startup_heap, gc_threshold
from .process import Batch, frame, read_frame

log = logging.getLogger("chatgw.shadow.worker")
# Outcomes go back together every RESULT_DELAY: the serving process wakes up for a batch,
# not for every copy (the counts and the guard's window are seconds wide).
RESULT_DELAY = 0.01


class RelayedResults:
    """Stands in for :class:`.results.ShadowResults`: every outcome goes to the parent."""

    def __init__(self, out: asyncio.WriteTransport) -> None:
        self.out = out
        self.batch = Batch(RESULT_DELAY, self._send)

    def count(self, route: str, result: str, n: int = 1) -> None:
        self._emit(("count", route, result, n))

    def add_sample(self, sample: dict[str, Any]) -> None:
        self._emit(("sample", sample))

    def done(self, job: int) -> None:
        self._emit(("done", job))

    def resize(self, samples: int) -> None:
        pass  # the parent keeps the samples

    def _emit(self, event: tuple[Any, ...]) -> None:
        self.batch.add(event)

    def flush(self) -> None:
        self.batch.flush()

    def _send(self, events: list[tuple[Any, ...]]) -> None:
        if self.out.is_closing():
            return
        # Summed here, so that the serving process does one counter step per route and
        # result and one loop over the finished jobs per batch, not a step per copy.
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        done: list[int] = []
        out: list[tuple[Any, ...]] = []
        for event in events:
            kind = event[0]
            if kind == "count":
                counts[event[1], event[2]] += event[3]
            elif kind == "done":
                done.append(event[1])
            else:
                out.append(event)
        t = os.times()
        out += [("counts", dict(counts)), ("done", done), ("cpu", t.user + t.system)]
        self.out.write(frame(out))


async def _pipes() -> tuple[asyncio.StreamReader, asyncio.WriteTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**30)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    frames_fd = os.dup(1)
    os.dup2(2, 1)  # stdout is the frame pipe's only writer from here on
    sys.stdout = sys.stderr
    transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(frames_fd, "wb", buffering=0)
    )
    return reader, transport


def lower_priority(nice: int | str) -> None:
    """``idle``: SCHED_IDLE, the copies run only on CPU that no other process wants (a
    waking request handler preempts them at once); a number: that nice value (never a
    higher priority than the gateway's own)."""
    try:
        if nice == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            assert isinstance(nice, int)
            os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as exc:
        log.warning(
            "shadow worker: priority %s not set (%s): copies run at the gateway's", nice, exc
        )


async def run() -> int:
    from ..app import Gateway
    from .mirror import Tap

    reader, out = await _pipes()
    try:
        _, config, env, nice = await read_frame(reader)
    except asyncio.IncompleteReadError:
        return 0
    lower_priority(nice)
    # The serving process's collector settings (gateway.gc_tuning): the copies run the
    # same module code, so they would pay the same collector cost without them.
    try:
        threshold = gc_threshold()
    except ValueError as exc:
        return await _refuse(out, str(exc))
    apply_gc_threshold(threshold)
    gateway = Gateway(config, env=env)
    results = RelayedResults(out)
    gateway.shadow.results = results  # type: ignore[assignment]
    try:
        await gateway.startup()
    except Exception as exc:
        return await _refuse(out, str(exc) or repr(exc))
    if threshold is not None:
        freeze_startup_heap()
    out.write(frame(("ready", os.getpid(), gc.get_threshold(), gc.get_freeze_count())))
    # The copies go through this process's own Mirror queue and workers (loop isolation,
    # started with the gateway); each one is reported back when a worker is through.
    mirror = gateway.shadow
    queue = mirror.queue
    assert queue is not None

    def finished(tap: Tap) -> None:
        results.done(tap.job)

    mirror.on_done = finished
    while True:
        try:
            msg = await read_frame(reader)
        except asyncio.IncompleteReadError:
            break
        kind = msg[0]
        if kind == "taps":
            for item in msg[1]:  # (process.tap_item)
                job, name, primary, scope, limit, body, headers, status, resp_raw, resp_body = item
                route = gateway.table.config.route(name)
                if route is None:  # gone in a reload the parent sent after this copy
                    results.count(name, "error")
                    results.done(job)
                    continue
                tap = Tap(route, primary, scope, limit, mirror=True, record=False)
                tap.body, tap.headers, tap.status = body, headers, status
                tap.resp_raw, tap.resp_body, tap.job = resp_raw, resp_body, job
                try:
                    queue.put_nowait(tap)
                except asyncio.QueueFull:  # a reload raised settings.shadow.queue
                    results.count(name, "dropped")
                    results.done(job)
        elif kind == "config":
            try:
                await gateway.apply_config(msg[1])
            except Exception:
                log.exception("shadow worker: the new config could not be applied")
        elif kind == "weights":
            gateway.set_weights(msg[1])
    await queue.join()
    await gateway.shutdown()
    results.flush()
    await _drain(out)
    return 0


async def _refuse(out: asyncio.WriteTransport, reason: str) -> int:
    """Tell the parent this process cannot serve (it stops the gateway with ``reason``)."""
    out.write(frame(("failed", reason)))
    await _drain(out)
    return 1


async def _drain(out: asyncio.WriteTransport, timeout: float = 5.0) -> None:
    """Close the frame pipe once what is written has reached the parent."""
    out.close()  # a pipe transport closes after its buffer is written
    for _ in range(int(timeout / 0.01)):
        if out.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.01)


def main() -> None:
    # The gateway decides when this process ends (it closes stdin); a Ctrl-C aimed at the
    # gateway's process group must not cut copies short or leave the parent waiting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s shadow-worker[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # the serving process's loop (gateway.server): a copy's loop steps cost less on it
    sys.exit(uvloop.run(run()))


if __name__ == "__main__":
    main()
