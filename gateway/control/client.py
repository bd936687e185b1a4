"""The ``chatgw`` commands that talk to a running gateway's control API.

``--url`` (default ``$CHATGW_ADMIN_URL`` or ``http://127.0.0.1:9000``) names any
replica's admin listener; the token comes from ``$GATEWAY_ADMIN_TOKEN`` (never from the
command line, where ``ps`` would show it). Human tables by default, ``--json`` for
scripts; exit codes in :mod:`gateway.cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:9000"

OK, FAILED, USAGE, NOT_FOUND, UNREACHABLE, UNAUTHORIZED, STORE_DOWN = 0, 1, 2, 4, 5, 6, 7


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("CHATGW_ADMIN_URL") or DEFAULT_URL).rstrip("/")


def _fail(args: argparse.Namespace, code: int, kind: str, message: str) -> _Exit:
    if args.json:
        print(json.dumps({"error": {"code": kind, "message": message}}))
    else:
        print(f"chatgw: {message}", file=sys.stderr)
    return _Exit(code)


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
         params: dict[str, Any] | None = None, *, quiet: bool = False) -> Any:  # fmt: skip
    """One API call; returns the JSON answer or raises _Exit with the documented code
    (``quiet``: without printing the error; the caller does without the answer)."""
    token = os.environ.get("GATEWAY_ADMIN_TOKEN", "").strip()
    if not token:
        raise _fail(args, UNAUTHORIZED, "no_token", "GATEWAY_ADMIN_TOKEN is not set in this shell")
    url = _url(args) + path
    try:
        resp = httpx.request(
            method, url, json=body, params=params, timeout=args.timeout, trust_env=False,
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise _fail(
            args, UNREACHABLE, "unreachable", f"cannot reach the gateway at {_url(args)}: {exc}"
        ) from None
    try:
        data = resp.json()
    except ValueError:
        data = {"error": {"code": "http", "message": f"HTTP {resp.status_code} from {url}"}}
    if resp.is_success:
        return data
    err = data.get("error", {}) if isinstance(data, dict) else {}
    code = {401: UNAUTHORIZED, 403: UNAUTHORIZED, 404: NOT_FOUND, 503: STORE_DOWN}.get(
        resp.status_code, FAILED
    )
    if quiet:
        raise _Exit(code)
    if args.json:
        print(json.dumps(data))
    else:
        print(f"chatgw: {err.get('message') or f'HTTP {resp.status_code}'}", file=sys.stderr)
        for issue in err.get("issues", []):
            print(f"  {issue.get('text', issue)}", file=sys.stderr)
    raise _Exit(code)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.action(args))
    except _Exit as exc:
        return exc.code


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _side(stats: dict[str, Any]) -> tuple[str, str, str]:
    if not stats["requests"]:
        return "0", "-", "-"
    p95 = stats["p95_ms"]
    return (f"{stats['rps']:.2f}", f"{stats['error_rate'] * 100:.2f}%",
            "-" if p95 is None else f"{p95:g}ms")  # fmt: skip


def _ramp(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    steps = ",".join(f"{s:g}" for s in r["steps"])
    where = f"{r['step'] + 1}/{len(r['steps'])}"
    return f"{r['state']} {where} [{steps}] every {r['every_seconds']:g}s"


def _guard(g: dict[str, Any] | None) -> str:
    if not g:
        return "-"
    if g["state"] == "red":
        return f"RED: {g['reason']}"
    return str(g["state"])


def status(args: argparse.Namespace) -> int:
    data = call(args, "GET", "/api/routes")
    if args.route:
        data["routes"] = [r for r in data["routes"] if r["name"] == args.route]
        if not data["routes"]:
            raise _fail(args, NOT_FOUND, "not_found", f"no route named {args.route!r}")
    if args.json:
        print(json.dumps(data))
        return OK
    store = data["store"]
    state = "reachable" if store["reachable"] else f"UNREACHABLE ({store['error']})"
    print(f"version {data['version']} · store {store['kind']} {store['where']} {state} · "
          f"replica {data['replica']}")  # fmt: skip
    window = data["routes"][0]["window_seconds"] if data["routes"] else 60
    try:  # the guard's verdict per route (a replica without the guard: "-")
        guard = call(args, "GET", "/api/guard", quiet=True).get("routes", {})
    except _Exit:
        guard = {}
    rows: list[tuple[str, ...]] = [
        ("ROUTE", "% NEW", "DEFAULT", "LEGACY REQ/S", "ERR", "P95", "NEW REQ/S", "ERR", "P95",
         "RAMP", "GUARD"),
    ]  # fmt: skip
    for r in data["routes"]:
        pct = _pct(r["percent"]) if r["module"] else "- (no module)"
        if r["override_percent"] is not None and r["module"]:
            pct += " *"
        rows.append((r["name"], pct, _pct(r["default_percent"]), *_side(r["sides"]["legacy"]),
                     *_side(r["sides"]["new"]), _ramp(r["ramp"]), _guard(guard.get(r["name"]))))  # fmt: skip
    _table(rows)
    print(f"(* live override; figures over the last {window} s on this replica)")
    return OK


def set_percent(args: argparse.Namespace) -> int:
    body = {"percent": args.percent, "reason": args.reason, "source": "cli"}
    data = call(args, "PUT", f"/api/routes/{args.route}/percent", body)
    if args.json:
        print(json.dumps(data))
    else:
        print(
            f"{data['route']}: {data['from']:g} % → {data['to']:g} % new (version {data['version']})"
        )
    return OK


def reset(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, "source": "cli"}
    data = call(args, "POST", f"/api/routes/{args.route}/reset", body)
    if args.json:
        print(json.dumps(data))
    else:
        print(f"{data['route']}: {data['from']:g} % → {data['to']:g} % new (routes.yaml share)")
    return OK


def rollback(args: argparse.Namespace) -> int:
    if bool(args.route) == bool(args.all):
        raise _fail(args, USAGE, "usage", "name one ROUTE or --all")
    body = {"reason": args.reason, "source": "cli"}
    path = "/api/rollback" if args.all else f"/api/routes/{args.route}/rollback"
    data = call(args, "POST", path, body)
    if args.json:
        print(json.dumps(data))
        return OK
    if not data["changed"]:
        print("nothing to roll back: every route is at 0 % new")
    for c in data["changed"]:
        print(f"{c['route']}: {c['from']:g} % → 0 % new (rolled back)")
    return OK


def ramp(args: argparse.Namespace) -> int:
    if args.stop:
        data = call(args, "POST", f"/api/routes/{args.route}/ramp/stop",
                    {"reason": args.reason or "", "source": "cli"})  # fmt: skip
        if args.json:
            print(json.dumps(data))
        else:
            print(f"{args.route}: ramp stopped ({_ramp(data['stopped'])})")
        return OK
    if not args.steps or not args.every or not args.reason:
        raise _fail(args, USAGE, "usage", "a ramp needs --steps, --every and --reason (or --stop)")
    try:
        steps = [float(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise _fail(
            args, USAGE, "usage", f"--steps {args.steps!r} is not a list like 1,5,25,50,100"
        ) from None
    body = {"steps": steps, "every": args.every, "reason": args.reason, "source": "cli"}
    data = call(args, "POST", f"/api/routes/{args.route}/ramp", body)
    if args.json:
        print(json.dumps(data))
    else:
        print(f"{args.route}: ramp started on {data['ramp']['owner']}: "
              f"{', '.join(f'{s:g}' for s in steps)} % every {args.every}")  # fmt: skip
    return OK


def audit(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.route:
        params["route"] = args.route
    data = call(args, "GET", "/api/audit", params=params)
    if args.json:
        print(json.dumps(data))
        return OK
    rows: list[tuple[str, ...]] = [
        ("TIME (UTC)", "WHO", "SOURCE", "ACTION", "ROUTE", "FROM→TO", "REASON")
    ]
    for e in data["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts"]))
        move = "" if e["from_percent"] is None and e["to_percent"] is None else (
            f"{_pct(e['from_percent'])}→{_pct(e['to_percent'])}")  # fmt: skip
        reason = e["reason"] + (f" ({e['detail']})" if e.get("detail") else "")
        rows.append((when, e["who"], e["source"], e["action"], e["route"], move, reason))
    _table(rows)
    return OK


def reload(args: argparse.Namespace) -> int:
    data = call(args, "POST", "/api/reload", {"reason": args.reason or "", "source": "cli"})
    if args.json:
        print(json.dumps(data))
    else:
        print(f"config reloaded: {data['summary']}")
    return OK


def add_commands(sub: Any) -> None:
    """Register status, set, reset, rollback, ramp, audit and reload on ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help=f"admin URL of any replica (default $CHATGW_ADMIN_URL or {DEFAULT_URL})"
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    common.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)

    p = sub.add_parser("status", parents=[common], help="per route: %% new, req/s, errors, p95")
    p.add_argument("route", nargs="?")
    p.set_defaults(func=run, action=status)

    p = sub.add_parser("set", parents=[common], help="set a route's live %% new")
    p.add_argument("route")
    p.add_argument("percent", type=float)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=run, action=set_percent)

    p = sub.add_parser("reset", parents=[common], help="drop a live override (back to routes.yaml)")
    p.add_argument("route")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=run, action=reset)

    p = sub.add_parser("rollback", parents=[common], help="send a route (or --all) back to legacy")
    p.add_argument("route", nargs="?")
    p.add_argument("--all", action="store_true")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=run, action=rollback)

    p = sub.add_parser("ramp", parents=[common], help="staged ramp: --steps 1,5,25 --every 10m")
    p.add_argument("route")
    p.add_argument("--steps")
    p.add_argument("--every")
    p.add_argument("--reason")
    p.add_argument("--stop", action="store_true", help="stop the route's ramp")
    p.set_defaults(func=run, action=ramp)

    p = sub.add_parser("audit", parents=[common], help="the audit trail, newest first")
    p.add_argument("--route")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=run, action=audit)

    p = sub.add_parser("reload", parents=[common], help="make the gateway re-read routes.yaml")
    p.add_argument("--reason")
    p.set_defaults(func=run, action=reload)
