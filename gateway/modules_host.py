"""Runs the in-process modules: builds each app once and drives its ASGI lifespan.

The gateway calls a module app directly, with the scope it would have proxied plus the
module's own lifespan ``state`` (a fresh shallow copy per request, as uvicorn does it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message

import modules
from modules import Dispatcher, ModuleContext

log = logging.getLogger("chatgw.modules")


class ModuleStartError(Exception):
    pass


class _Lifespan:
    """Drives one app's lifespan protocol from the outside."""

    def __init__(self, name: str, app: ASGIApp) -> None:
        self.name = name
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._supported = True

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:  # an app without lifespan support raises on the scope type
            await self._outbox.put({"type": "lifespan.unsupported", "message": repr(exc)})

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        msg = await self._outbox.get()
        if msg["type"] == "lifespan.startup.failed":
            raise ModuleStartError(
                f"module {self.name!r} failed to start: {msg.get('message', '')}"
            )
        if msg["type"] == "lifespan.unsupported":
            self._supported = False

    async def shutdown(self) -> None:
        if self._task is None:
            return
        if self._supported and not self._task.done():
            await self._inbox.put({"type": "lifespan.shutdown"})
            try:
                msg = await asyncio.wait_for(self._outbox.get(), timeout=10)
                if msg["type"] == "lifespan.shutdown.failed":
                    log.error("module %s failed to shut down: %s", self.name, msg.get("message"))
            except TimeoutError:
                log.error("module %s did not shut down within 10 s", self.name)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: S110 - already reported above
            pass


class ModuleHost:
    """The running modules of one gateway process, by name."""

    def __init__(self, dispatcher: Dispatcher | None, env: Any = None) -> None:
        self._ctx = ModuleContext(
            dispatcher=dispatcher, **({"env": env} if env is not None else {})
        )
        self._running: dict[str, _Lifespan] = {}

    def get(self, name: str) -> tuple[ASGIApp, dict[str, Any]]:
        lf = self._running[name]
        return lf.app, lf.state

    def __contains__(self, name: str) -> bool:
        return name in self._running

    async def ensure(self, names: Iterable[str]) -> None:
        """Start every module in ``names`` that is not running yet (all or none)."""
        started: list[_Lifespan] = []
        try:
            for name in sorted(set(names)):
                if name in self._running:
                    continue
                app = modules.get_factory(name)(self._ctx)
                lf = _Lifespan(name, app)
                await lf.startup()
                started.append(lf)
                self._running[name] = lf
        except BaseException:
            for lf in started:
                self._running.pop(lf.name, None)
                await lf.shutdown()
            raise

    async def stop(self) -> None:
        for name in list(self._running):
            await self._running.pop(name).shutdown()
