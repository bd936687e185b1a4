"""One JSON line per request on stdout (logger ``chatgw.access``).

Fields: ``ts`` (epoch seconds), ``rid``, ``route``, ``backend``, ``method``, ``path``,
``status``, ``ms``, ``bytes``. Never the query string (WebSocket tokens travel there),
never ``Authorization`` or cookies.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

import orjson

logger = logging.getLogger("chatgw.access")


class AccessLog:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self._stream = stream or sys.stdout
        self._flush_soon = False

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
    ) -> None:
        if not self.enabled:
            return
        line = orjson.dumps(
            {
                "ts": round(time.time(), 3),
                "rid": rid.decode("ascii", "replace"),
                "route": route,
                "backend": backend,
                "method": method,
                "path": path,
                "status": status,
                "ms": round(seconds * 1000, 3),
                "bytes": nbytes,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        try:
            self._stream.write(line.decode())
        except (OSError, ValueError):  # stdout closed: never fail a request over a log line
            return
        # Flushed promptly: stdout is block-buffered when it is a pipe or a file (a
        # container without PYTHONUNBUFFERED), which held lines back until 8 KiB piled up
        # and lost them on a kill. Once per event-loop turn, not per line: a write()
        # syscall per request was ~7 % of the gateway's CPU at 50 connections.
        if self._flush_soon:
            return
        try:
            asyncio.get_running_loop().call_soon(self._flush)
            self._flush_soon = True
        except RuntimeError:  # no loop running (CLI, tests): flush now
            self._flush()

    def _flush(self) -> None:
        self._flush_soon = False
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass
