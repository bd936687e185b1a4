"""``chatgw replay``: play a request script against two targets and compare the answers.

::

    chatgw replay tests/replay/contract.jsonl --a legacy.json --b http://127.0.0.1:8080 \\
        --report diff.html --fail-on-diff

A **target** is a base URL (every service behind it), a JSON/YAML file mapping services to
URLs (``{"default": URL, "services": {"chat-session": URL, ...}}``: the legacy stack), or
``app:ROUTES.yaml`` (the gateway app in this process, on an ephemeral port).

A **script** is JSONL, one exchange a line (hand-written, or recorded by
``settings.record``)::

    {"name": "create a session", "kind": "http", "service": "chat-session",
     "request": {"method": "POST", "path": "/api/sessions",
                 "headers": {"authorization": "Bearer {{token:customer:u-1}}"},
                 "json": {"metadata": {"k": "{{rand:m}}"}}},
     "capture": {"sid": "$.sessionId"}, "expect": {"status": 201}}
    {"name": "stream", "kind": "sse", "service": "ai-service", "request": {...}}
    {"name": "ws ping", "kind": "ws", "service": "chat-core",
     "request": {"path": "/ws?token={{token:customer:u-1}}",
                 "frames": [{"send": {"type": "ping"}}, {"recv": 1}]}}

Placeholders: ``{{token:ROLE:SUB}}`` a fresh HS256 JWT (``--jwt-secret`` or
``JWT_SECRET_KEY``/``JWT_SECRET``); ``{{NAME}}`` a value captured by ``capture`` (JSON path
into an earlier answer, per target: each side keeps its own ids); ``{{rand:NAME}}`` a
random value per target (unique names on shared storage; it may sit inside another
placeholder: ``{{token:customer:c-{{rand:u}}}}``), replaced by ``<rand:NAME>`` in both
answers before comparing. A string that is exactly one placeholder keeps the captured
value's JSON type.

Every entry runs on A then on B (interleaved, so both see the same shared state; a run of
consecutive entries with the same ``"group"`` runs on A as a whole, then on B), and the
answers are compared by :func:`gateway.shadow.compare.compare` with the default rules
(status, content-type, JSON with ``uuid``, ``timestamp`` and ``id`` normalised, the free
text ``$.error.message`` ignored) plus the
entry's ``compare`` and ``known`` (paths expected to differ: reported, not failing). A
WebSocket exchange is compared as the list of frames received. ``expect.status`` checks A.

Exit codes: 0, or 1 with ``--fail-on-diff`` when an unexpected difference or an error
(connection, ``expect``) was found; 2 bad usage or an unreadable script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from ..config import NORMALISERS, CompareRules
from .compare import Exchange, compare, parse_json_path, path_matches

_PLACEHOLDER = re.compile(r"\{\{([^{}]+)\}\}")
_RAND = re.compile(r"\{\{(rand:[^{}]+)\}\}")
# The contract (legacy-api.md §1): "The message text is free; clients and comparisons rely
# only on status and code."
DEFAULT_RULES = CompareRules(
    headers=("content-type",),
    normalise=("uuid", "timestamp", "id"),
    ignore=("$.error.message",),
)


class ScriptError(ValueError):
    pass


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    label: str
    default: str | None = None
    services: dict[str, str] = field(default_factory=dict)

    def url(self, service: str | None) -> str:
        base = self.services.get(service or "") or self.default
        if base is None:
            raise ScriptError(f"target {self.label} has no URL for service {service!r}")
        return base.rstrip("/")


@contextlib.asynccontextmanager
async def open_target(spec: str) -> AsyncIterator[Target]:
    if spec.startswith("app:"):
        async with _in_process(spec[4:]) as url:
            yield Target(spec, url)
        return
    if re.match(r"^https?://", spec):
        yield Target(spec, spec)
        return
    try:
        text = _read(spec)
    except OSError as exc:
        raise ScriptError(f"target {spec!r}: not a URL and not readable ({exc.strerror})") from None
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ScriptError(f"target file {spec}: must map 'default' and/or 'services'")
    services = data.get("services") or {}
    yield Target(spec, data.get("default"), {str(k): str(v) for k, v in services.items()})


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


@contextlib.asynccontextmanager
async def _in_process(routes: str) -> AsyncIterator[str]:
    import socket

    import uvicorn

    import modules

    from ..app import Gateway
    from ..config import load_config

    gateway = Gateway(load_config(routes, known_modules=modules.names()))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(gateway, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise ScriptError(f"app:{routes} did not start")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


# --------------------------------------------------------------------------- placeholders


class Side:
    """One target's state while a script runs: captured values and its random values."""

    def __init__(self, target: Target, secret: str | None) -> None:
        self.target = target
        self.secret = secret
        self.vars: dict[str, Any] = {}
        self.rand: dict[str, str] = {}

    def value(self, name: str) -> Any:
        if name.startswith("token:"):
            _, role, sub = [*name.split(":", 2), "", ""][:3]
            if not self.secret:
                raise ScriptError("{{token:…}} needs --jwt-secret or JWT_SECRET_KEY")
            import jwt

            claims = {"sub": sub, "role": role, "exp": int(time.time()) + 3600}
            return jwt.encode(claims, self.secret, algorithm="HS256")
        if name.startswith("rand:"):
            if name not in self.rand:
                self.rand[name] = secrets.token_hex(5)
            return self.rand[name]
        if name not in self.vars:
            raise ScriptError(f"{{{{{name}}}}} was not captured by an earlier entry")
        return self.vars[name]

    def fill(self, v: Any) -> Any:
        if isinstance(v, str):
            v = _RAND.sub(lambda m: str(self.value(m.group(1))), v)
            whole = _PLACEHOLDER.fullmatch(v)
            if whole:
                return self.value(whole.group(1).strip())
            return _PLACEHOLDER.sub(lambda m: str(self.value(m.group(1).strip())), v)
        if isinstance(v, dict):
            return {k: self.fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.fill(x) for x in v]
        return v


def _lookup(data: Any, path: str) -> Any:
    cur = data
    for tok in parse_json_path(path):
        found = (isinstance(tok, int) and isinstance(cur, list) and tok < len(cur)) or (
            isinstance(tok, str) and isinstance(cur, dict) and tok in cur
        )
        if found:
            cur = cur[tok]
        else:
            return None
    return cur


# --------------------------------------------------------------------------- exchanges


async def _http(client: httpx.AsyncClient, side: Side, entry: dict[str, Any]) -> Exchange:
    req = side.fill(entry.get("request") or {})
    url = side.target.url(entry.get("service")) + req.get("path", "/")
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    content: bytes | None = None
    if "json" in req:
        content = orjson.dumps(req["json"])
        headers.setdefault("content-type", "application/json")
    elif "body" in req:
        content = str(req["body"]).encode()
    r = await client.request(req.get("method", "GET"), url, headers=headers, content=content)
    return Exchange(r.status_code, [(k.lower(), v) for k, v in r.headers.items()], r.content)


async def _ws(side: Side, entry: dict[str, Any]) -> Exchange:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    req = side.fill(entry.get("request") or {})
    url = re.sub(r"^http", "ws", side.target.url(entry.get("service"))) + req.get("path", "/ws")
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    got: list[Any] = []
    status = 101
    try:
        async with connect(url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
            try:
                for step in req.get("frames") or []:
                    if "send" in step:
                        data = step["send"]
                        await ws.send(data if isinstance(data, str) else json.dumps(data))
                    for _ in range(int(step.get("recv", 0))):
                        raw = await asyncio.wait_for(ws.recv(), float(step.get("timeout", 10)))
                        try:
                            got.append(json.loads(raw))
                        except ValueError:
                            got.append(raw)
            except ConnectionClosed as exc:
                got.append({"closed": exc.rcvd.code if exc.rcvd else None})
            except TimeoutError:
                got.append({"timeout": True})
    except InvalidStatus as exc:
        status = exc.response.status_code
    body = orjson.dumps(got)
    return Exchange(status, [("content-type", "application/json")], body)


def _rules(entry: dict[str, Any], base: CompareRules) -> CompareRules:
    c = entry.get("compare") or {}
    return CompareRules(
        headers=tuple(c.get("headers", base.headers)),
        ignore=base.ignore + tuple(c.get("ignore", ())),
        normalise=tuple(c.get("normalise", base.normalise)),
    )


async def _run_entry(client: httpx.AsyncClient, side: Side, entry: dict[str, Any]) -> Exchange:
    kind = entry.get("kind", "http")
    ex = await (_ws(side, entry) if kind == "ws" else _http(client, side, entry))
    if entry.get("capture"):
        try:
            data = orjson.loads(ex.body)
        except orjson.JSONDecodeError:
            data = None
        for var, path in entry["capture"].items():
            side.vars[var] = _lookup(data, path)
    return ex


def _groups(entries: list[dict[str, Any]]) -> list[list[int]]:
    """Consecutive entries with the same ``group`` run on A all together, then on B."""
    out: list[list[int]] = []
    for i, entry in enumerate(entries):
        g = entry.get("group")
        if g is not None and out and entries[out[-1][0]].get("group") == g:
            out[-1].append(i)
        else:
            out.append([i])
    return out


async def run_script(
    entries: list[dict[str, Any]],
    a: Target,
    b: Target,
    *,
    secret: str | None,
    rules: CompareRules = DEFAULT_RULES,
) -> dict[str, Any]:
    sides = (Side(a, secret), Side(b, secret))
    results: list[dict[str, Any]] = []
    limits = httpx.Limits(max_keepalive_connections=10)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as client:
        for group in _groups(entries):
            answers: dict[int, list[Exchange]] = {i: [] for i in group}
            errors: dict[int, str] = {}
            for side in sides:
                for i in group:
                    if i in errors:
                        continue
                    try:
                        answers[i].append(await _run_entry(client, side, entries[i]))
                    except (ScriptError, httpx.HTTPError, OSError, TimeoutError) as exc:
                        errors[i] = f"{type(exc).__name__}: {exc}"
            for i in group:
                results.append(_judge(entries[i], i, answers[i], errors.get(i), sides, rules))
    summary = {
        "entries": len(results),
        "matched": sum(1 for r in results if not r["differences"] and "error" not in r),
        "unexpected": sum(1 for r in results if r["differences"]),
        "known": sum(1 for r in results if r["known"]),
        "errors": sum(1 for r in results if "error" in r),
    }
    return {"a": a.label, "b": b.label, "summary": summary, "entries": results}


def _judge(
    entry: dict[str, Any],
    i: int,
    answers: list[Exchange],
    error: str | None,
    sides: tuple[Side, Side],
    rules: CompareRules,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": entry.get("name") or f"#{i + 1}",
        "kind": entry.get("kind", "http"),
        "differences": [],
        "known": [],
    }
    if error is not None or len(answers) != 2:
        out["error"] = error or "no answer"
        return out
    # every side's random values, in both answers (lists show the other side's items too)
    rand = {v: k for side in sides for k, v in side.rand.items()}
    cleaned = []
    for ex in answers:
        body = ex.body
        for value, name in rand.items():
            body = body.replace(value.encode(), f"<{name}>".encode())
        cleaned.append(Exchange(ex.status, ex.headers, body))
    pa, pb = cleaned
    out["a"] = {"status": pa.status, "body": _excerpt(pa.body)}
    out["b"] = {"status": pb.status, "body": _excerpt(pb.body)}
    want = (entry.get("expect") or {}).get("status")
    if want is not None and pa.status != want:
        out["error"] = f"expect: A answered {pa.status}, the script expects {want}"
    result = compare(pa, pb, _rules(entry, rules))
    known = [parse_json_path(p) if p.startswith("$") else p for p in entry.get("known", [])]
    for d in result.differences:
        expected = any(
            (k == d.path) if isinstance(k, str) else _json_path_of(d.path, k) for k in known
        )
        (out["known"] if expected else out["differences"]).append(d.as_dict())
    return out


def _json_path_of(path: str, pattern: Any) -> bool:
    if not path.startswith("$"):
        return False
    try:
        return path_matches(pattern, parse_json_path(path))
    except ValueError:
        return False


def _excerpt(body: bytes, limit: int = 1000) -> str:
    text = body.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- reports


def html_report(report: dict[str, Any]) -> str:
    e = html.escape
    s = report["summary"]
    rows = []
    for r in report["entries"]:
        state = "error" if "error" in r else "diff" if r["differences"] else "ok"
        diffs = "".join(
            f"<li><code>{e(d['path'])}</code>: <code>{e(json.dumps(d['primary']))}</code> → "
            f"<code>{e(json.dumps(d['shadow']))}</code></li>"
            for d in r["differences"]
        )
        known = "".join(
            f"<li class=known><code>{e(d['path'])}</code> (known)</li>" for d in r["known"]
        )
        err = f"<li class=error>{e(r['error'])}</li>" if "error" in r else ""
        sa = r.get("a", {}).get("status", "-")
        sb = r.get("b", {}).get("status", "-")
        rows.append(
            f"<tr class={state}><td>{e(r['name'])}</td><td>{e(r['kind'])}</td>"
            f"<td>{sa}</td><td>{sb}</td><td><ul>{err}{diffs}{known}</ul></td></tr>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>chatgw replay</title><style>"
        "body{font:14px system-ui;margin:2em}td{border-top:1px solid #ddd;padding:4px 8px;"
        "vertical-align:top}tr.diff{background:#fff3f0}tr.error{background:#ffe0e0}"
        "tr.ok td:first-child{color:#2a7}li.known{color:#888}</style>"
        f"<h1>Replay: {e(report['a'])} vs {e(report['b'])}</h1>"
        f"<p>{s['entries']} exchanges: {s['matched']} identical, {s['unexpected']} with "
        f"unexpected differences, {s['known']} with known ones, {s['errors']} errors.</p>"
        "<table><tr><th>exchange<th>kind<th>A<th>B<th>differences</tr>" + "".join(rows) + "</table>"
    )


def load_script(path: str) -> list[dict[str, Any]]:
    entries = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise ScriptError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(entry, dict) or entry.get("kind", "http") not in (
                "http",
                "sse",
                "ws",
            ):
                raise ScriptError(f"{path}:{n}: an entry is an object with kind http, sse or ws")
            entries.append(entry)
    return entries


async def _main(args: argparse.Namespace) -> int:
    entries = load_script(args.file)
    secret = args.jwt_secret or os.environ.get("JWT_SECRET_KEY") or os.environ.get("JWT_SECRET")
    rules = DEFAULT_RULES
    if args.normalise is not None:
        names = tuple(n for n in args.normalise.split(",") if n)
        bad = [n for n in names if n not in NORMALISERS]
        if bad:
            raise ScriptError(
                f"--normalise: unknown {', '.join(bad)} (use {', '.join(sorted(NORMALISERS))})"
            )
        rules = CompareRules(headers=rules.headers, normalise=names, ignore=rules.ignore)
    if args.ignore:
        rules = CompareRules(
            headers=rules.headers,
            normalise=rules.normalise,
            ignore=rules.ignore + tuple(args.ignore),
        )
    async with open_target(args.a) as a, open_target(args.b) as b:
        report = await run_script(entries, a, b, secret=secret, rules=rules)
    if args.report:
        if args.report.endswith((".html", ".htm")):
            _write(args.report, html_report(report))
        else:
            _write(args.report, json.dumps(report, indent=2))
    for r in report["entries"]:
        if "error" in r:
            print(f"ERROR  {r['name']}: {r['error']}")
        for d in r["differences"]:
            print(f"DIFF   {r['name']}: {d['path']}: {d['primary']!r} != {d['shadow']!r}")
    s = report["summary"]
    print(
        f"replay: {s['entries']} exchanges, {s['matched']} identical, "
        f"{s['unexpected']} with unexpected differences, {s['known']} known, {s['errors']} errors"
    )
    if args.fail_on_diff and (s["unexpected"] or s["errors"]):
        return 1
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a request script against two targets and compare")
    p.add_argument("file", help="JSONL request script")
    p.add_argument("--a", required=True, help="URL, targets file, or app:ROUTES.yaml")
    p.add_argument("--b", required=True, help="URL, targets file, or app:ROUTES.yaml")
    p.add_argument("--report", help="write a report: FILE.html or FILE.json")
    p.add_argument("--fail-on-diff", action="store_true", help="exit 1 on an unexpected difference")
    p.add_argument("--jwt-secret", help="secret for {{token:ROLE:SUB}} (default: JWT_SECRET_KEY)")
    p.add_argument("--normalise", help="comma list of uuid,timestamp,id (default: all three)")
    p.add_argument("--ignore", action="append", help="a JSON path to ignore (repeatable)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except (ScriptError, OSError) as exc:
        print(f"chatgw replay: {exc}", file=sys.stderr)
        return 2
