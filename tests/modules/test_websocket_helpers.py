"""Helpers of the websocket module tests (import as ``from test_websocket_helpers import …``).

``ModuleServer`` runs ``modules.websocket`` under uvicorn (``websockets-sansio``, as the
gateway serves it) in a thread on an ephemeral port; the clients are real sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Coroutine, Mapping
from typing import Any

import httpx
import jwt
import uvicorn
from tests_support import RECV_TIMEOUT, recv, send  # noqa: F401 - re-exported
from websockets.sync.client import ClientConnection, connect

from modules import Dispatcher, ModuleContext
from modules.websocket import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mint(secret: str, sub: str, role: str = "customer", exp_in: int = 3600) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short test secrets
        return str(
            jwt.encode(
                {"sub": sub, "role": role, "exp": int(time.time()) + exp_in},
                secret,
                algorithm="HS256",
            )
        )


def uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


class ModuleServer:
    """``create_app(ctx)`` served by uvicorn in a background thread."""

    def __init__(self, env: Mapping[str, str], dispatcher: Dispatcher | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(ModuleContext(dispatcher=dispatcher, env=dict(env)))
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            ws="websockets-sansio",
            lifespan="on",
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("module server did not start")
            time.sleep(0.02)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(main())

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run ``coro`` on the server's event loop (e.g. to reach its in-process store)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def ws_url(self, token: str | None = None, path: str = "/ws") -> str:
        url = "ws" + self.url.removeprefix("http") + path
        return url + (f"?token={token}" if token is not None else "")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> ModuleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ws_open(url: str, **kw: Any) -> ClientConnection:
    return connect(
        url,
        proxy=None,
        compression=None,
        open_timeout=10,
        close_timeout=2,
        max_size=None,
        **kw,
    )


def assert_silent(ws: ClientConnection, within: float = 0.3) -> None:
    try:
        raw = ws.recv(timeout=within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {raw!r}")


def join(ws: ClientConnection, sid: str) -> None:
    send(ws, {"type": "join", "sessionId": sid})
    assert recv(ws) == {"type": "joined", "sessionId": sid}


def legacy_session(sid: str, user_id: str, agent: str = "ai") -> str:
    """A legacy-shape session record (what chat-session writes)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return json.dumps(
        {
            "sessionId": sid,
            "userId": user_id,
            "agent": agent,
            "context": {},
            "metadata": {},
            "createdAt": now,
            "updatedAt": now,
        },
        separators=(",", ":"),
    )


def put_session(redis: Any, user_id: str, agent: str = "ai") -> str:
    """Store a new session through a sync Redis client; its id."""
    sid = str(uuid.uuid4())
    redis.set(f"session:{sid}", legacy_session(sid, user_id, agent), ex=86400)
    redis.zadd(f"user_sessions:{user_id}", {sid: int(time.time() * 1000)})
    return sid


def http_client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=15)
