"""``chatgw``: run and inspect the gateway.

Against a running gateway's admin API (``--url``, token from ``$GATEWAY_ADMIN_TOKEN``,
``--json`` for scripts): ``status``, ``set``, ``reset``, ``rollback``, ``ramp``,
``audit``, ``reload`` (:mod:`gateway.control.client`). Their exit codes: 0 done; 1 the
gateway refused (invalid percent, route without a module, ramp already running, config
reload refused: issues printed with file and line); 2 usage; 4 no such route (or no ramp
on it); 5 cannot reach the gateway; 6 unauthorized (no token in the shell, a wrong one:
401, or none configured on the gateway: 403); 7 the weight store (Redis) is unreachable,
nothing was changed: retry later.

Exit codes: 0 success; 1 invalid config (each problem printed with file and line) or a
failed action; 2 bad command-line usage; 3 a port that cannot be listened on. ``migrate``
(:mod:`gateway.migrate.cli`): 8 finished but left records untouched (malformed, changed
meanwhile: see its report); 9 stopped before the end (``--max-batches``, Ctrl-C),
progress saved for ``--resume``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import modules

from .config import load_config, parse_duration
from .errors import ConfigError

DEFAULT_CONFIG = "routes.yaml"


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("CHATGW_CONFIG") or DEFAULT_CONFIG)


def cmd_check(args: argparse.Namespace) -> int:
    path = args.file or _config_path(args)
    try:
        config = load_config(path, known_modules=modules.names())
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        n = len(exc.issues)
        print(f"{path}: {n} problem{'s' if n != 1 else ''}, config refused", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.routes)} routes, {len(config.upstreams)} upstreams)")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        config = load_config(path, known_modules=modules.names())
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    rows = [("ROUTE", "MATCH", "LEGACY", "MODULE", "% NEW")]
    for r in config.routes:
        methods = f" [{','.join(sorted(r.match.methods - {'HEAD'}))}]" if r.match.methods else ""
        kind = " (ws)" if r.match.websocket else ""
        rows.append(
            (
                r.name,
                r.match.pattern + methods + kind,
                r.legacy,
                r.module or "-",
                f"{r.new_percent:g}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_force_token(args: argparse.Namespace) -> int:
    from .split import mint_force_token

    secret = os.environ.get("GATEWAY_OPS_SECRET")
    if not secret:
        print(
            "chatgw: GATEWAY_OPS_SECRET is not set: the gateway honours no force token without it",
            file=sys.stderr,
        )
        return 1
    ttl = parse_duration(args.ttl)
    if ttl is None:
        print(f"chatgw: --ttl {args.ttl!r} is not a duration like 30m or 1h", file=sys.stderr)
        return 2
    print(mint_force_token(secret, args.side, ttl))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import server

    path = _config_path(args)
    try:  # validate before binding anything, so a broken file is reported as such
        load_config(path, known_modules=modules.names())
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    try:
        server.check_ports(args.host, args.port, args.admin_port, args.workers)
        if args.reload:
            server.serve_reload(
                path, args.host, args.port, args.admin_host, args.admin_port, args.log_level
            )
            return 0
        if args.workers > 1:
            return server.serve_workers(
                path,
                args.host,
                args.port,
                args.admin_host,
                args.admin_port,
                args.workers,
                args.log_level,
            )
        server.serve_one(
            path, args.host, args.port, args.admin_host, args.admin_port,
            reuse_port=args.reuse_port, log_level=args.log_level,
        )  # fmt: skip
    except server.PortTaken as exc:
        print(f"chatgw: {exc}", file=sys.stderr)
        return 3
    return 0


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 0 and 65535")
    return port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatgw", description="Strangler-fig migration gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway (client port + admin port)")
    s.add_argument("--config", help=f"routes file (default $CHATGW_CONFIG or {DEFAULT_CONFIG})")
    s.add_argument("--host", default=os.environ.get("CHATGW_HOST", "127.0.0.1"))
    s.add_argument("--port", type=_port, default=int(os.environ.get("CHATGW_PORT", "8080")))
    s.add_argument("--admin-host", default=os.environ.get("CHATGW_ADMIN_HOST", "127.0.0.1"))
    s.add_argument(
        "--admin-port", type=_port, default=int(os.environ.get("CHATGW_ADMIN_PORT", "9000"))
    )
    s.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    s.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    s.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="validate a routes file; exit 1 listing every problem")
    c.add_argument("file", nargs="?")
    c.add_argument("--config", help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("routes", help="print the route table")
    r.add_argument("--config")
    r.set_defaults(func=cmd_routes)

    f = sub.add_parser(
        "force-token", help="mint a token that forces a side (needs GATEWAY_OPS_SECRET)"
    )
    f.add_argument("--side", choices=["new", "legacy"], required=True)
    f.add_argument("--ttl", default="1h")
    f.set_defaults(func=cmd_force_token)

    from .shadow.cli import add_commands as add_shadow_commands

    add_shadow_commands(sub)  # replay FILE --a --b, shadow report

    from .control.client import add_commands as add_control_commands

    add_control_commands(sub)  # status, set, reset, rollback, ramp, audit, reload

    from .migrate.cli import add_commands as add_migrate_commands

    add_migrate_commands(sub)  # migrate sessions|env, backup redis, restore redis
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        print("chatgw: --workers must be at least 1", file=sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
