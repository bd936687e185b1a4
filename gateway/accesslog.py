"""One JSON line per request on the gateway's stdout.

Fields: ``ts`` (epoch seconds), ``rid``, ``route``, ``backend``, ``method``, ``path``,
``status``, ``ms``, ``bytes``. Never the query string (WebSocket tokens travel there),
never ``Authorization`` or cookies.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

import orjson

# The longest a line waits before it reaches stdout (seconds), and the most bytes held.
FLUSH_DELAY = 0.05
MAX_PENDING = 64 * 1024


_LINE = (
    b'{"ts":%.3f,"rid":%s,"route":%s,"backend":%s,"method":%s,"path":%s,"status":%d,'
    b'"ms":%.3f,"bytes":%d}\n'
)


def _json(text: str) -> bytes:
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:  # a lone surrogate: written escaped
        return orjson.dumps(text.encode("utf-8", "backslashreplace").decode("utf-8"))


class AccessLog:
    """The access log. Lines are buffered here, not in ``sys.stdout``: with
    ``PYTHONUNBUFFERED=1`` (common in containers, and set on this project's machines)
    stdout writes through, and a ``write()`` syscall per request was the second of the two
    syscalls the in-process path made (bench/README.md). Lines leave at most
    ``FLUSH_DELAY`` after they were written, at ``MAX_PENDING`` bytes, and when the gateway
    stops (:meth:`flush`)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self._stream = stream or sys.stdout
        self._pending: list[bytes] = []
        self._size = 0
        self._flush_soon = False
        self._names: dict[str, bytes] = {}  # route, backend and method -> JSON string

    def _name(self, text: str) -> bytes:
        cached = self._names.get(text)
        if cached is None:
            cached = _json(text)
            if len(self._names) < 4096:  # methods come from clients: bounded
                self._names[text] = cached
        return cached

    def write(
        self,
        rid: bytes,
        route: str,
        backend: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        nbytes: int,
        ts: float | None = None,
    ) -> None:
        """One line; ``ts``: when the request ended (epoch seconds; default now)."""
        if not self.enabled:
            return
        # One %-format, not a dict through orjson: round(x, 3) alone cost ~1 µs a call, and
        # this runs once per request (bench/README.md). Strings are JSON-escaped by orjson
        # (the small sets of routes, backends and methods once each).
        line = _LINE % (
            time.time() if ts is None else ts,
            b'"%s"' % rid if rid.isalnum() else _json(rid.decode("ascii", "replace")),
            self._name(route),
            self._name(backend),
            self._name(method),
            _json(path),
            status,
            seconds * 1000,
            nbytes,
        )
        self._pending.append(line)
        self._size += len(line)
        if self._size >= MAX_PENDING:
            self._flush()
            return
        if self._flush_soon:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
            self._flush_soon = True
        except RuntimeError:  # no loop running (CLI, tests): flush now
            self._flush()

    def flush(self) -> None:
        """Write out what is pending now (the gateway calls it when it stops)."""
        self._flush()

    def _flush(self) -> None:
        self._flush_soon = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        stream = self._stream
        try:  # never fail a request over a log line (stdout closed, disk full)
            binary = getattr(stream, "buffer", None)
            if binary is not None:
                stream.flush()  # whatever was printed before goes first
                binary.write(data)
                binary.flush()
            else:
                stream.write(data.decode())
                stream.flush()
        except (OSError, ValueError):
            pass
