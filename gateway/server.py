"""Running the gateway: the client listener and the admin listener in one process.

The CLI binds both sockets itself before anything starts, so that a taken port is a clear
error and not a traceback; the admin listener is started and stopped by the gateway's own
lifespan, so it shares the process, the event loop and the gateway's live state.

``--workers N`` starts N processes, each binding the client port with ``SO_REUSEPORT``
(the kernel spreads connections) and its own admin port (``admin_port + i``).

Graceful drain (SIGTERM or SIGINT): ``/ready`` answers 503 at once, open WebSockets are
closed with 1001 (going away) so clients reconnect to another replica, the client listener
stops accepting, and in-flight requests get up to ``CHATGW_DRAIN_SECONDS`` (default 20)
to finish before uvicorn cancels them; then modules and the admin listener stop.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import uvicorn

import modules

from .admin import create_admin_app
from .app import Gateway
from .busypoll import setting_from_env
from .config import load_config
from .control.guard import Guard
from .control.plane import ControlPlane
from .gc_tuning import apply_gc_threshold, freeze_startup_heap, gc_threshold
from .http11 import GatewayHttpProtocol

log = logging.getLogger("chatgw")


class PortTaken(Exception):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def check_ports(host: str, port: int, admin_port: int, workers: int = 1) -> None:
    """Refuse a client port that is also an admin port (``admin_port + i`` per worker).
    Both sockets are bound with SO_REUSEADDR before either listens, so both binds succeed;
    the admin listener then listens and the client one never does, and the process went
    on serving only its admin app on the client port (``/ready`` 200, upgrades 403)."""
    if port and admin_port <= port < admin_port + max(workers, 1):
        raise PortTaken(
            host, port, "the client listener and an admin listener were given the same port"
        )


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortTaken(host, port, exc.strerror or str(exc)) from None
    sock.set_inheritable(True)
    return sock


DRAIN_ENV = "CHATGW_DRAIN_SECONDS"
DEFAULT_DRAIN_SECONDS = 20.0


def drain_seconds(env: Any = None) -> float:
    """The drain deadline from ``CHATGW_DRAIN_SECONDS`` (seconds, default 20)."""
    raw = (os.environ if env is None else env).get(DRAIN_ENV, "").strip()
    if not raw:
        return DEFAULT_DRAIN_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ValueError(f"{DRAIN_ENV}={raw!r} is not a number of seconds between 0 and 3600")
    return value


class DrainingServer(uvicorn.Server):
    """uvicorn's server, plus the gateway's part of a graceful drain (see the module doc)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.gateway.begin_drain()  # /ready 503 now, not after the next 0.1 s tick
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.begin_drain()
        closed = await self.gateway.close_websockets()
        if closed:
            log.warning("drain: closed %d WebSocket(s) with 1001", closed)
        await super().shutdown(sockets)


def uvicorn_config(app: Any, *, busy_poll: float = 0.0, **kw: Any) -> uvicorn.Config:
    """The gateway's uvicorn settings; ``busy_poll``: the most :mod:`gateway.busypoll`'s
    adaptive window may be (s; 0: off, as here by default; ``serve_one`` reads the setting)."""
    options: dict[str, Any] = {
        "loop": "uvloop",
        # httptools, with each response's head and first body chunk in one write (http11.py)
        "http": GatewayHttpProtocol,
        "ws": "websockets-sansio",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        # The gateway writes X-Forwarded-* itself from the peer it sees (app._forward_headers);
        # uvicorn's rewrite of the client from a trusted peer's X-Forwarded-For would make it
        # append the original client twice and take X-Forwarded-Proto from the client.
        "proxy_headers": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 15,
    }
    options.update(kw)
    config = uvicorn.Config(app, **options)
    config.chatgw_busy_poll = busy_poll  # type: ignore[attr-defined]  # read by http11
    return config


def attach_admin(
    gateway: Gateway,
    sock: socket.socket | None,
    host: str,
    port: int,
    control: ControlPlane | None = None,
) -> None:
    """Start the admin listener with the gateway and stop it before the gateway stops."""
    app = create_admin_app(gateway, control)
    cfg = uvicorn_config(app, host=host, port=port, lifespan="off")
    server = uvicorn.Server(cfg)

    async def start() -> None:
        cfg.load()
        server.lifespan = cfg.lifespan_class(cfg)
        await server.startup(sockets=[sock] if sock is not None else None)

    async def stop() -> None:
        if server.servers:
            await server.shutdown()

    gateway.started_hooks.append(start)
    gateway.stopping_hooks.append(stop)


def build(
    config_path: str, admin_host: str, admin_port: int, admin_sock: socket.socket | None
) -> Gateway:
    config = load_config(config_path, known_modules=modules.names())
    gateway = Gateway(config)
    # The control plane (live weights, /api, hot reload) loads the stored weights in a
    # started hook, after the admin listener is up and before /ready says 200.
    control = ControlPlane(gateway, config_path, replica=f"{socket.gethostname()}:{admin_port}")
    gateway.control = control
    attach_admin(gateway, admin_sock, admin_host, admin_port, control)
    gateway.started_hooks.append(control.start)
    # The guard judges each route's new side and rolls it back on a breach; ramps ask it.
    # the shadow mismatch share feeds the guard where a route sets guard.mismatch_rate
    control.guard = guard = Guard(control, mismatch_rate=gateway.shadow.results.mismatch_rate)
    control.ramp_may_advance = guard.ok
    gateway.started_hooks.append(guard.start)
    gateway.stopping_hooks.append(guard.stop)
    gateway.stopping_hooks.append(control.stop)
    return gateway


async def _freeze_startup_heap() -> None:
    frozen = freeze_startup_heap()
    log.info("gc: %d start-up objects frozen, thresholds %s", frozen, gc.get_threshold())


def serve_one(
    config_path: str,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    *,
    reuse_port: bool = False,
    log_level: str = "warning",
) -> None:
    """Serve in this process until SIGTERM/SIGINT, then drain (see the module doc)."""
    try:
        drain = drain_seconds()
        threshold = gc_threshold()
        busy_poll = setting_from_env()
    except ValueError as exc:
        sys.exit(f"chatgw: {exc}")
    apply_gc_threshold(threshold)
    sock = bind(host, port, reuse_port=reuse_port)
    admin_sock = bind(admin_host, admin_port)
    gateway = build(config_path, admin_host, admin_port, admin_sock)
    gateway.client_sockets = [sock]
    if threshold is not None:
        # last of the started hooks: modules, pools and the control plane are up
        gateway.started_hooks.append(_freeze_startup_heap)
    print(
        f"chatgw: serving {config_path} on http://{host}:{port} (admin http://{admin_host}:{admin_port})",
        file=sys.stderr,
        flush=True,
    )
    print(f"chatgw: {busy_poll.describe()}", file=sys.stderr, flush=True)
    cfg = uvicorn_config(
        gateway,
        busy_poll=busy_poll.most,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=drain,
    )
    DrainingServer(cfg, gateway).run(sockets=[sock])


def app_from_env() -> Gateway:
    """Factory for ``--reload`` (uvicorn re-imports it on every change)."""
    admin_host = os.environ.get("CHATGW_ADMIN_HOST", "127.0.0.1")
    admin_port = int(os.environ.get("CHATGW_ADMIN_PORT", "9000"))
    return build(os.environ.get("CHATGW_CONFIG", "routes.yaml"), admin_host, admin_port, None)


def serve_reload(
    config_path: str, host: str, port: int, admin_host: str, admin_port: int, log_level: str
) -> None:
    os.environ["CHATGW_CONFIG"] = os.path.abspath(config_path)
    os.environ["CHATGW_ADMIN_HOST"] = admin_host
    os.environ["CHATGW_ADMIN_PORT"] = str(admin_port)
    here = os.path.dirname(os.path.abspath(__file__))
    uvicorn.run(
        "gateway.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        reload=True,
        reload_dirs=[here, os.path.join(os.path.dirname(here), "modules")],
        loop="uvloop",
        http=GatewayHttpProtocol,
        access_log=False,
        log_level=log_level,
    )


def serve_workers(
    config_path: str,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    workers: int,
    log_level: str,
) -> int:
    """Supervise ``workers`` processes; forward SIGTERM/SIGINT; exit when all have exited."""
    # Fail early and clearly if a port is taken (each child binds again with SO_REUSEPORT).
    bind(host, port, reuse_port=True).close()
    for i in range(workers):
        bind(admin_host, admin_port + i).close()
    children = []
    for i in range(workers):
        argv = [
            sys.executable, "-m", "gateway.cli", "serve", "--config", config_path,
            "--host", host, "--port", str(port), "--admin-host", admin_host,
            "--admin-port", str(admin_port + i), "--log-level", log_level, "--reuse-port",
        ]  # fmt: skip
        children.append(subprocess.Popen(argv))

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # config reload in every worker
    codes = [child.wait() for child in children]
    return max(codes, default=0)
