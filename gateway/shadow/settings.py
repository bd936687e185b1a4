"""Validation of the ``shadow:`` block of a route and of ``settings.shadow``/``settings.record``.

Called by :mod:`gateway.config` while it builds a route; every problem is reported with the
file, line and fix in the config's usual way, e.g.::

    routes.yaml:31 routes[2].shadow.methods: POST is not a safe method: mirroring it would
    write twice; remove it or set dry_run: true (the module then runs it without writing)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import (
    HTTP_METHODS,
    NORMALISERS,
    SAFE_METHODS,
    CompareRules,
    Match,
    RecordSettings,
    Shadow,
    ShadowSettings,
    _bad,
    _check_keys,
    parse_duration,
    parse_percent,
    parse_size,
)
from .compare import BadPath, parse_json_path

if TYPE_CHECKING:
    from ..config import _Doc


def _str_list(doc: _Doc, value: Any, path: str, what: str) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        doc.issue(path, f"{value!r} must be a list of {what}")
        return None
    return tuple(value)


def _percent(doc: _Doc, value: Any, path: str) -> int | None:
    basis = parse_percent(value)
    if basis is None:
        doc.issue(path, f"{value!r} is not between 0 and 100 with at most two decimals")
    return basis


def parse_compare(doc: _Doc, raw: Any, p: str) -> CompareRules:
    if raw is None:
        return CompareRules()
    if not isinstance(raw, dict):
        doc.issue(p, "must be a mapping (headers, ignore, normalise, noise, redact)")
        return CompareRules()
    _check_keys(doc, raw, p, ["headers", "ignore", "normalise", "noise", "redact"])
    kw: dict[str, Any] = {}
    if "headers" in raw and (h := _str_list(doc, raw["headers"], f"{p}.headers", "header names")):
        kw["headers"] = tuple(x.lower() for x in h)
    elif "headers" in raw and raw["headers"] == []:
        kw["headers"] = ()
    if "ignore" in raw and (ig := _str_list(doc, raw["ignore"], f"{p}.ignore", "JSON paths")):
        for i, text in enumerate(ig):
            try:
                parse_json_path(text)
            except BadPath as exc:
                doc.issue(f"{p}.ignore[{i}]", f"{exc}: write a JSON path like $.data[*].updatedAt")
        kw["ignore"] = ig
    if "normalise" in raw and (
        n := _str_list(doc, raw["normalise"], f"{p}.normalise", ", ".join(sorted(NORMALISERS)))
    ):
        for i, name in enumerate(n):
            if name not in NORMALISERS:
                doc.issue(
                    f"{p}.normalise[{i}]",
                    f"unknown normaliser {name!r}: use {', '.join(sorted(NORMALISERS))}",
                )
        kw["normalise"] = n
    if "noise" in raw:
        if isinstance(raw["noise"], bool):
            kw["noise"] = raw["noise"]
        else:
            doc.issue(f"{p}.noise", "must be true or false")
    if "redact" in raw and (r := _str_list(doc, raw["redact"], f"{p}.redact", "field names")):
        kw["redact"] = r
    return CompareRules(**kw)


def parse_shadow(
    doc: _Doc, raw: Any, p: str, *, module: str | None, match: Match | None
) -> Shadow | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        doc.issue(p, "must be a mapping like {percent: 10, methods: [GET]}")
        return None
    _check_keys(doc, raw, p, ["percent", "methods", "max_body", "dry_run", "compare"])
    if module is None:
        doc.issue(p, "a route without a module has no other side to mirror to: add 'module'")
    if match is not None and match.websocket:
        doc.issue(p, "WebSocket routes are not mirrored: compare them with `chatgw replay`")
    kw: dict[str, Any] = {}
    if "percent" in raw and (b := _percent(doc, raw["percent"], f"{p}.percent")) is not None:
        kw["basis"] = b
    dry_run = raw.get("dry_run", False)
    if not isinstance(dry_run, bool):
        doc.issue(f"{p}.dry_run", "must be true or false")
        dry_run = False
    kw["dry_run"] = dry_run
    if "methods" in raw:
        m = raw["methods"]
        if (
            not isinstance(m, list)
            or not m
            or not all(isinstance(x, str) and x.upper() in HTTP_METHODS for x in m)
        ):
            doc.issue(
                f"{p}.methods",
                f"{m!r} must be a non-empty list of {', '.join(sorted(HTTP_METHODS))}",
            )
        else:
            methods = frozenset(x.upper() for x in m)
            unsafe = sorted(methods - SAFE_METHODS)
            if unsafe and not dry_run:
                doc.issue(
                    f"{p}.methods",
                    f"{', '.join(unsafe)} {'is not a safe method' if len(unsafe) == 1 else 'are not safe methods'}:"
                    " mirroring would write twice; remove it or set dry_run: true"
                    " (the module then runs it without writing)",
                )
            kw["methods"] = methods | ({"HEAD"} if "GET" in methods else set())
    if "max_body" in raw:
        size = parse_size(raw["max_body"])
        if size is None:
            _bad(doc, f"{p}.max_body", raw["max_body"], "a size like 1MiB or 65536")
        else:
            kw["max_body"] = size
    kw["compare"] = parse_compare(doc, raw.get("compare"), f"{p}.compare")
    return Shadow(**kw)


def parse_shadow_settings(doc: _Doc, raw: Any, p: str) -> ShadowSettings:
    if not isinstance(raw, dict):
        doc.issue(p, "must be a mapping (queue, workers, timeout, samples, isolation, nice)")
        return ShadowSettings()
    _check_keys(doc, raw, p, ["queue", "workers", "timeout", "samples", "isolation", "nice"])
    kw: dict[str, Any] = {}
    for key, top in (("queue", 1_000_000), ("workers", 1000), ("samples", 100_000)):
        if key in raw:
            v = raw[key]
            if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top:
                kw[key] = v
            else:
                doc.issue(f"{p}.{key}", f"{v!r} is not a whole number between 1 and {top}")
    if "timeout" in raw:
        t = parse_duration(raw["timeout"])
        if t is None:
            _bad(doc, f"{p}.timeout", raw["timeout"], "a duration like 5s or 500ms")
        else:
            kw["timeout"] = t
    if "isolation" in raw:
        iso = raw["isolation"]
        if iso in ("loop", "process"):
            kw["isolation"] = iso
        else:
            doc.issue(
                f"{p}.isolation",
                f"{iso!r} must be loop (copies in the serving process) or process (copies in a"
                " child process at lower CPU priority)",
            )
    if "nice" in raw:
        n = raw["nice"]
        if n == "idle" or (isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 19):
            kw["nice"] = n
        else:
            doc.issue(
                f"{p}.nice",
                f"{n!r} must be idle (the scheduler's idle class: only CPU no other process"
                " wants) or a nice value from 0 to 19",
            )
    return ShadowSettings(**kw)


def parse_record_settings(doc: _Doc, raw: Any, p: str) -> RecordSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        doc.issue(p, "must be a mapping (path, percent, redact_fields)")
        return None
    _check_keys(doc, raw, p, ["path", "percent", "redact_fields"])
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip():
        doc.issue(f"{p}.path", "is required: the JSONL file to append recorded requests to")
        return None
    basis = 100
    if "percent" in raw:
        basis = _percent(doc, raw["percent"], f"{p}.percent") or 0
    fields: tuple[str, ...] = ()
    if "redact_fields" in raw:
        fields = _str_list(doc, raw["redact_fields"], f"{p}.redact_fields", "field names") or ()
    return RecordSettings(path=path, basis=basis, redact_fields=fields)
