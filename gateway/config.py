"""routes.yaml: load, substitute the environment, validate everything at once.

The config is a tree of frozen dataclasses built once at load. Validation collects every
problem before failing and names the file, the line, the YAML path and the fix::

    routes.yaml:14 routes[2].new_percent: 120 is not between 0 and 100

A reload is all-or-nothing: :func:`load_config` either returns a whole new
:class:`GatewayConfig` or raises :class:`~gateway.errors.ConfigError`, so the caller keeps
serving the last good one.

Example::

    upstreams:
      chat-session: {url: "${CHAT_SESSION_URL:-http://127.0.0.1:8004}", read_timeout: 10s}
    routes:
      - name: session-item
        match: {path: "/api/sessions/{sessionId}", methods: [GET, PATCH, DELETE]}
        legacy: chat-session
        module: session
        new_percent: 12.5          # 0..100, two decimals at most
        sticky: jwt.sub            # header:NAME cookie:NAME path:PARAM query:NAME none
        guard: {error_rate: 1%, p95: 250ms}   # auto-rollback (gateway.control.guard)
        shadow:                    # mirror a share to the other side and compare (gateway.shadow)
          percent: 100             # 0..100 of this route's requests
          methods: [GET, HEAD]     # safe methods only unless dry_run: true
          max_body: 1MiB           # request/response bodies above it are counted, not mirrored
          dry_run: false           # unsafe methods go to the module with x-gateway-shadow: dry-run
          compare: {headers: [content-type], ignore: ["$.createdAt"], normalise: [uuid],
                    noise: true, redact: [password]}

    settings:
      shadow: {queue: 1000, workers: 8, timeout: 5s, samples: 200,
               isolation: loop, nice: idle}   # process: copies in a child at lower priority
      record: {path: traffic.jsonl, percent: 1, redact_fields: [password]}
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import yaml

from .errors import ConfigError, ConfigIssue

StickyKind = Literal["jwt.sub", "header", "cookie", "path", "query", "none"]

DEFAULT_BODY_LIMIT = 1024 * 1024
DEFAULT_TIMEOUT = 30.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NORMALISERS = frozenset({"uuid", "timestamp", "id"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Sticky:
    """Where the split key of a request comes from."""

    kind: StickyKind
    name: str = ""

    def __str__(self) -> str:
        return self.kind if not self.name else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = DEFAULT_TIMEOUT
    pool_size: int = 100


@dataclass(frozen=True)
class Match:
    path: str | None = None
    prefix: str | None = None
    methods: frozenset[str] | None = None
    websocket: bool = False

    @property
    def pattern(self) -> str:
        return self.path if self.path is not None else f"{self.prefix}/**"


@dataclass(frozen=True)
class CompareRules:
    """What a shadow comparison looks at (see :mod:`gateway.shadow.compare`)."""

    headers: tuple[str, ...] = ("content-type",)
    ignore: tuple[str, ...] = ()  # JSON paths: $.a, $.data[*].b, $..updatedAt
    normalise: tuple[str, ...] = ()  # uuid, timestamp, id
    noise: bool = False  # a second primary call marks fields that differ anyway
    redact: tuple[str, ...] = ()  # body fields blanked in stored samples


@dataclass(frozen=True)
class Shadow:
    """A route's mirroring: ``basis`` (percent × 100) of its requests go to the other side too."""

    basis: int = 10_000
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    max_body: int = DEFAULT_BODY_LIMIT
    dry_run: bool = False
    compare: CompareRules = field(default_factory=CompareRules)


@dataclass(frozen=True)
class ShadowSettings:
    queue: int = 1000
    workers: int = 8
    timeout: float = 5.0
    samples: int = 200
    isolation: str = "loop"  # loop: copies in the serving loop; process: a child at `nice`
    nice: int | str = "idle"  # 0..19, or idle: SCHED_IDLE (CPU no other process wants)


@dataclass(frozen=True)
class RecordSettings:
    path: str
    basis: int = 100  # 1 %
    redact_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Guard:
    """A route's auto-rollback thresholds, judged on its new side (:mod:`.control.guard`)."""

    enabled: bool = True
    error_rate: float = 0.001  # 5xx share (0.1 %), abnormal WebSocket closes included
    p95: float = 0.1  # seconds (not judged on WebSocket routes: it is a session length)
    min_requests: int = 20  # fewer requests in the window are not judged
    window: float = 30.0  # seconds, at most the 60 s the live window keeps
    ws_abnormal_closes: bool = True  # closes 1006/1011 and module crashes count as errors
    mismatch_rate: float | None = None  # shadow mismatch share, when shadowing feeds it


@dataclass(frozen=True)
class Route:
    name: str
    match: Match
    legacy: str
    module: str | None = None
    new_basis: int = 0  # new_percent × 100: 0..10 000 buckets go to the new side
    sticky: Sticky = Sticky("jwt.sub")
    timeout: float = DEFAULT_TIMEOUT
    body_limit: int = DEFAULT_BODY_LIMIT
    line: int | None = None
    guard: Guard = field(default_factory=Guard)
    shadow: Shadow | None = None

    @property
    def new_percent(self) -> float:
        return self.new_basis / 100


@dataclass(frozen=True)
class Settings:
    backend_header: bool = True
    access_log: bool = True
    force_header: str = "x-gateway-force"
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    record: RecordSettings | None = None


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    settings: Settings = field(default_factory=Settings)

    def route(self, name: str) -> Route | None:
        for r in self.routes:
            if r.name == name:
                return r
        return None


# --------------------------------------------------------------------------- parsing

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
    "GB": 1000**3, "GiB": 1024**3,
}  # fmt: skip
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


class _Doc:
    """A YAML document turned into plain values, remembering the line of every path."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.issues: list[ConfigIssue] = []
        self._loader = yaml.SafeLoader("")

    def issue(self, path: str, message: str) -> None:
        if path and any(i.path == path for i in self.issues):
            return  # one problem per place: the first is the cause, later ones its echo
        line = self.lines.get(path)
        probe = path
        while line is None and probe:
            probe = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe)
            line = self.lines.get(probe)
        self.issues.append(ConfigIssue(self.file, line, path, message))

    def convert(self, node: yaml.Node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(self._loader.construct_object(key_node))
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.lines[sub] = key_node.start_mark.line + 1
                    self.issue(sub, f"duplicate key '{key}': keep one")
                out[key] = self.convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
        value = self._loader.construct_object(node)
        if isinstance(value, str) and "${" in value:
            value = self._substitute(value, path, plain=getattr(node, "style", None) is None)
        return value

    def _substitute(self, text: str, path: str, *, plain: bool) -> Any:
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.issue(
                path,
                f"environment variable {name} is not set: set it or write ${{{name}:-default}}",
            )
            return ""

        out = _VAR.sub(repl, text)
        if plain:  # a plain scalar gets its YAML type back (``${PCT:-5}`` is the number 5)
            try:
                typed = yaml.safe_load(out)
            except yaml.YAMLError:
                return out
            if isinstance(typed, str | int | float | bool):
                return typed
        return out


def _check_keys(doc: _Doc, value: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            doc.issue(f"{path}.{key}" if path else key, f"unknown key '{key}': {hint}")


def parse_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        return seconds if seconds > 0 else None
    return None


def parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
        return size if size > 0 else None
    return None


def parse_percent(value: Any) -> int | None:
    """``new_percent`` as basis points (0..10 000), or None if invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0 or d > 100 or (d * 100) != (d * 100).to_integral_value():
        return None
    return int(d * 100)


def parse_sticky(value: Any) -> Sticky | None:
    if not isinstance(value, str):
        return None
    if value in ("jwt.sub", "none"):
        return Sticky(value)  # type: ignore[arg-type]
    kind, _, name = value.partition(":")
    if kind in ("header", "cookie", "path", "query") and name:
        return Sticky(kind, name.lower() if kind == "header" else name)  # type: ignore[arg-type]
    return None


_TEMPLATE_SEGMENT = re.compile(r"^(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z0-9._~!$&'()*+,;=:@-]+)$")


def _check_path(doc: _Doc, path: str, value: Any, *, template: bool) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        doc.issue(path, f"{value!r} must be a string starting with '/'")
        return None
    if value == "/":
        return value
    body = value.rstrip("/") if not template else value
    if template and value.endswith("/") and value != "/":
        doc.issue(
            path,
            f"{value!r} ends with '/': write it without (one trailing slash is always tolerated)",
        )
        return None
    for seg in body.split("/")[1:]:
        if seg in ("", ".", ".."):
            doc.issue(path, f"{value!r} has an empty, '.' or '..' segment")
            return None
        if not _TEMPLATE_SEGMENT.match(seg) or (not template and "{" in seg):
            what = (
                "a literal or a whole {param}"
                if template
                else "a literal (prefixes take no {param})"
            )
            doc.issue(path, f"segment {seg!r} of {value!r} must be {what}")
            return None
    return body or "/"


def _build(doc: _Doc, raw: Any, known_modules: Iterable[str] | None) -> GatewayConfig | None:
    if not isinstance(raw, dict):
        doc.issue("", "the file must be a mapping with 'upstreams' and 'routes'")
        return None
    _check_keys(doc, raw, "", ["settings", "defaults", "upstreams", "routes"])

    settings = Settings()
    raw_settings = raw.get("settings") or {}
    if not isinstance(raw_settings, dict):
        doc.issue("settings", "must be a mapping")
    else:
        _check_keys(
            doc,
            raw_settings,
            "settings",
            ["backend_header", "access_log", "force_header", "shadow", "record"],
        )
        kw: dict[str, Any] = {}
        for key in ("backend_header", "access_log"):
            if key in raw_settings:
                if isinstance(raw_settings[key], bool):
                    kw[key] = raw_settings[key]
                else:
                    doc.issue(f"settings.{key}", "must be true or false")
        if "force_header" in raw_settings:
            fh = raw_settings["force_header"]
            if isinstance(fh, str) and re.fullmatch(r"[A-Za-z0-9-]+", fh):
                kw["force_header"] = fh.lower()
            else:
                doc.issue("settings.force_header", "must be a header name")
        if "shadow" in raw_settings:
            from .shadow.settings import parse_shadow_settings

            kw["shadow"] = parse_shadow_settings(doc, raw_settings["shadow"], "settings.shadow")
        if "record" in raw_settings:
            from .shadow.settings import parse_record_settings

            kw["record"] = parse_record_settings(doc, raw_settings["record"], "settings.record")
        settings = Settings(**kw)

    defaults = raw.get("defaults") or {}
    d_timeout, d_limit, d_sticky = DEFAULT_TIMEOUT, DEFAULT_BODY_LIMIT, Sticky("jwt.sub")
    if not isinstance(defaults, dict):
        doc.issue("defaults", "must be a mapping")
        defaults = {}
    _check_keys(doc, defaults, "defaults", ["timeout", "body_limit", "sticky", "guard"])
    d_guard = Guard()
    if "guard" in defaults:
        from .control.guard import parse_guard

        d_guard = parse_guard(doc, defaults["guard"], "defaults.guard", d_guard)
    if "timeout" in defaults:
        if (t := parse_duration(defaults["timeout"])) is None:
            _bad(doc, "defaults.timeout", defaults["timeout"], "a duration like 30s or 500ms")
        else:
            d_timeout = t
    if "body_limit" in defaults:
        if (b := parse_size(defaults["body_limit"])) is None:
            _bad(doc, "defaults.body_limit", defaults["body_limit"], "a size like 1MiB")
        else:
            d_limit = b
    if "sticky" in defaults:
        if (st := parse_sticky(defaults["sticky"])) is None:
            _bad(doc, "defaults.sticky", defaults["sticky"], _STICKY_FIX)
        else:
            d_sticky = st

    upstreams: dict[str, Upstream] = {}
    raw_up = raw.get("upstreams")
    if not isinstance(raw_up, dict) or not raw_up:
        doc.issue("upstreams", "must be a mapping of at least one upstream name to {url: ...}")
        raw_up = {}
    for name, spec in raw_up.items():
        p = f"upstreams.{name}"
        if not isinstance(spec, dict):
            doc.issue(p, "must be a mapping with at least 'url'")
            continue
        _check_keys(doc, spec, p, ["url", "connect_timeout", "read_timeout", "pool_size"])
        url = spec.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+(/.*)?$", url):
            doc.issue(f"{p}.url", f"{url!r} is not an http:// URL")
            continue
        up = Upstream(name=name, url=url.rstrip("/"), read_timeout=d_timeout)
        if "connect_timeout" in spec:
            ct = parse_duration(spec["connect_timeout"])
            up = _replace(up, connect_timeout=ct) if ct else up
            if not ct:
                _bad(doc, f"{p}.connect_timeout", spec["connect_timeout"], "a duration like 2s")
        if "read_timeout" in spec:
            rt = parse_duration(spec["read_timeout"])
            up = _replace(up, read_timeout=rt) if rt else up
            if not rt:
                _bad(doc, f"{p}.read_timeout", spec["read_timeout"], "a duration like 30s")
        if "pool_size" in spec:
            ps = spec["pool_size"]
            if isinstance(ps, int) and not isinstance(ps, bool) and 1 <= ps <= 10_000:
                up = _replace(up, pool_size=ps)
            else:
                doc.issue(f"{p}.pool_size", f"{ps!r} is not a whole number between 1 and 10000")
        upstreams[name] = up

    modules = set(known_modules) if known_modules is not None else None
    routes: list[Route] = []
    names: dict[str, str] = {}
    raw_routes = raw.get("routes")
    if not isinstance(raw_routes, list):
        doc.issue("routes", "must be a list of routes")
        raw_routes = []
    for i, spec in enumerate(raw_routes):
        route = _build_route(
            doc, f"routes[{i}]", spec, upstreams, raw_up, modules, d_timeout, d_limit, d_sticky,
            d_guard,
        )  # fmt: skip
        if route is None:
            continue
        if route.name in names:
            doc.issue(
                f"routes[{i}].name",
                f"route name '{route.name}' is already used by {names[route.name]}",
            )
            continue
        names[route.name] = f"routes[{i}]"
        routes.append(route)
    if doc.issues:
        return None
    return GatewayConfig(
        source=doc.file, upstreams=upstreams, routes=tuple(routes), settings=settings
    )


_STICKY_FIX = "one of jwt.sub, header:NAME, cookie:NAME, path:PARAM, query:NAME, none"


def _bad(doc: _Doc, path: str, value: Any, expected: str) -> None:
    doc.issue(path, f"{value!r} is not {expected}")


def _replace(up: Upstream, **kw: Any) -> Upstream:
    from dataclasses import replace

    return replace(up, **kw)


def _build_route(
    doc: _Doc,
    p: str,
    spec: Any,
    upstreams: Mapping[str, Upstream],
    raw_up: Mapping[str, Any],
    modules: set[str] | None,
    d_timeout: float,
    d_limit: int,
    d_sticky: Sticky,
    d_guard: Guard,
) -> Route | None:
    if not isinstance(spec, dict):
        doc.issue(p, "must be a mapping with name, match and legacy")
        return None
    n_before = len(doc.issues)
    _check_keys(
        doc,
        spec,
        p,
        [
            "name", "match", "legacy", "module", "new_percent", "sticky", "timeout",
            "body_limit", "shadow", "guard",
        ],
    )  # fmt: skip
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        doc.issue(f"{p}.name", f"{name!r} must be a name of letters, digits, '-', '_' or '.'")
    m = spec.get("match")
    match: Match | None = None
    if not isinstance(m, dict):
        doc.issue(f"{p}.match", "must be a mapping with 'path' (a template) or 'prefix'")
    else:
        _check_keys(doc, m, f"{p}.match", ["path", "prefix", "methods", "websocket"])
        if ("path" in m) == ("prefix" in m):
            doc.issue(
                f"{p}.match", "give exactly one of 'path' (a template like /api/x/{id}) or 'prefix'"
            )
        else:
            template = "path" in m
            checked = _check_path(
                doc,
                f"{p}.match.{'path' if template else 'prefix'}",
                m.get("path", m.get("prefix")),
                template=template,
            )
            methods: frozenset[str] | None = None
            if "methods" in m:
                raw_m = m["methods"]
                if (
                    not isinstance(raw_m, list)
                    or not raw_m
                    or not all(isinstance(x, str) and x.upper() in HTTP_METHODS for x in raw_m)
                ):
                    doc.issue(
                        f"{p}.match.methods",
                        f"{raw_m!r} must be a non-empty list of {', '.join(sorted(HTTP_METHODS))}",
                    )
                else:
                    methods = frozenset(x.upper() for x in raw_m)
                    if "GET" in methods:
                        methods = methods | {"HEAD"}
            ws = m.get("websocket", False)
            if not isinstance(ws, bool):
                doc.issue(f"{p}.match.websocket", "must be true or false")
                ws = False
            if checked is not None:
                match = Match(
                    path=checked if template else None,
                    prefix=None if template else checked,
                    methods=methods,
                    websocket=ws,
                )
    legacy = spec.get("legacy")
    if not isinstance(legacy, str) or legacy not in upstreams:
        if isinstance(legacy, str) and legacy in raw_up:
            pass  # the upstream itself is broken and already reported
        else:
            known = ", ".join(upstreams) or "none defined"
            doc.issue(f"{p}.legacy", f"{legacy!r} is not an upstream name (known: {known})")
    module = spec.get("module")
    if module is not None and (
        not isinstance(module, str) or (modules is not None and module not in modules)
    ):
        known_m = ", ".join(sorted(modules)) if modules is not None else "?"
        doc.issue(f"{p}.module", f"{module!r} is not a registered module (known: {known_m})")
    basis = 0
    if "new_percent" in spec:
        parsed = parse_percent(spec["new_percent"])
        if parsed is None:
            doc.issue(
                f"{p}.new_percent",
                f"{spec['new_percent']!r} is not between 0 and 100 with at most two decimals",
            )
        else:
            basis = parsed
        if parsed and module is None:
            doc.issue(
                f"{p}.new_percent",
                "a route without a module always goes to legacy: add 'module' or set 0",
            )
    sticky = d_sticky
    if "sticky" in spec:
        sticky = parse_sticky(spec["sticky"]) or d_sticky
        if parse_sticky(spec["sticky"]) is None:
            _bad(doc, f"{p}.sticky", spec["sticky"], _STICKY_FIX)
        elif (
            sticky.kind == "path"
            and match is not None
            and "{" + sticky.name + "}" not in (match.path or "")
        ):
            doc.issue(
                f"{p}.sticky", f"path parameter '{sticky.name}' is not in the route's path template"
            )
    # A route waits as long as its upstream's read_timeout unless it says otherwise.
    timeout = (
        upstreams[legacy].read_timeout
        if isinstance(legacy, str) and legacy in upstreams
        else d_timeout
    )
    if "timeout" in spec:
        t = parse_duration(spec["timeout"])
        if t is None:
            _bad(doc, f"{p}.timeout", spec["timeout"], "a duration like 30s or 500ms")
        else:
            timeout = t
    limit = d_limit
    if "body_limit" in spec:
        b = parse_size(spec["body_limit"])
        if b is None:
            _bad(doc, f"{p}.body_limit", spec["body_limit"], "a size like 1MiB or 1048576")
        else:
            limit = b
    shadow: Shadow | None = None
    if "shadow" in spec:
        from .shadow.settings import parse_shadow

        shadow = parse_shadow(doc, spec["shadow"], f"{p}.shadow", module=module, match=match)
    guard = d_guard
    if "guard" in spec:
        from .control.guard import parse_guard

        guard = parse_guard(doc, spec["guard"], f"{p}.guard", d_guard)
    if len(doc.issues) != n_before or match is None:
        return None
    assert isinstance(name, str) and isinstance(legacy, str)
    return Route(
        name=name, match=match, legacy=legacy, module=module, new_basis=basis, sticky=sticky,
        timeout=timeout, body_limit=limit, line=doc.lines.get(p), guard=guard, shadow=shadow,
    )  # fmt: skip


# --------------------------------------------------------------------------- entry points


def parse_config(
    text: str,
    file: str = "routes.yaml",
    *,
    env: Mapping[str, str] | None = None,
    known_modules: Iterable[str] | None = None,
    extra_checks: Iterable[Callable[[GatewayConfig], list[ConfigIssue]]] = (),
) -> GatewayConfig:
    """Parse and validate config text; raise ConfigError listing every problem."""
    doc = _Doc(file, os.environ if env is None else env)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(file, line, "", f"is not valid YAML: {reason}")]) from None
    if node is None:
        raise ConfigError([ConfigIssue(file, 1, "", "is empty: it needs 'upstreams' and 'routes'")])
    raw = doc.convert(node, "")
    config = _build(doc, raw, known_modules)
    if config is None:
        raise ConfigError(doc.issues)
    from .routing import route_conflicts

    issues = [
        ConfigIssue(file, line, path, msg) for line, path, msg in route_conflicts(config.routes)
    ]
    for check in extra_checks:
        issues.extend(check(config))
    if issues:
        raise ConfigError(issues)
    return config


def load_config(
    path: str,
    *,
    env: Mapping[str, str] | None = None,
    known_modules: Iterable[str] | None = None,
) -> GatewayConfig:
    """Read and validate ``path``. Raises ConfigError (never a bare OSError or YAMLError)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(path, None, "", f"cannot be read: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(path, None, "", "is not UTF-8 text")]) from None
    return parse_config(text, path, env=env, known_modules=known_modules)
