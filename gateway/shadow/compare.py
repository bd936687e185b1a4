"""Compare two answers to the same request: pure functions, no I/O.

``compare(primary, shadow, rules, noise)`` → :class:`Result`, a list of differences, each
named by where it is::

    status                       the status codes differ
    headers.content-type         one of ``rules.headers`` differs (names lower-cased)
    $.data[0].agent              a JSON value (key order never matters)
    $                            a whole non-JSON body (text and binary: compared as bytes)
    sse.text                     an event stream's reassembled text (the ``delta`` pieces)
    sse.final.$.usage            its final event, compared as JSON

Rules (a route's ``shadow.compare``): ``ignore`` JSON paths (``$.createdAt``,
``$.data[*].updatedAt``, ``$..updatedAt`` at any depth), ``normalise`` volatile values
before comparing (``uuid`` and ``timestamp`` inside any string, ``id`` for integers under a
key ``id`` or ``…Id``), and ``noise``: given a second answer of the primary side, every path
where the two primary answers differ is *noisy* (Diffy's noise cancellation) and is listed
in ``Result.noisy`` instead of being reported.

Example::

    >>> a = Exchange(200, [("content-type", "application/json")], b'{"a": 1, "b": 2}')
    >>> b = Exchange(200, [("content-type", "application/json")], b'{"b": 2, "a": 1}')
    >>> compare(a, b, CompareRules()).match
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import CompareRules

__all__ = [
    "Difference",
    "Exchange",
    "Result",
    "compare",
    "parse_json_path",
    "parse_sse",
    "path_matches",
    "render_path",
]

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# ISO-8601 date-times (JavaScript's toISOString, Python's isoformat), with or without zone.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
_ID_KEY = re.compile(r"^(id|.*Id|.*_id)$")
_MISSING = "<missing>"

Token = str | int  # a key or a list index
Pattern = tuple[str | int, ...]  # plus the wildcards "*" (any key), -1 (any index), ".." (depth)
_ANY_INDEX = -1
_DEEP = ".."


@dataclass(frozen=True)
class Exchange:
    """One answer: status, headers (lower-case names) and the body (possibly truncated)."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class Difference:
    path: str
    primary: Any
    shadow: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "primary": self.primary, "shadow": self.shadow}


@dataclass
class Result:
    differences: list[Difference] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return not self.differences


# --------------------------------------------------------------------------- JSON paths


class BadPath(ValueError):
    pass


_PATH_TOKEN = re.compile(
    r"""\.\.(?=[A-Za-z_*\[])|\.([A-Za-z_$][\w$-]*|\*)|\[(\*|\d+|'[^']*'|"[^"]*")\]"""
)


def parse_json_path(text: str) -> Pattern:
    """``$.data[*].updatedAt`` → ("data", -1, "updatedAt"). Raises BadPath."""
    if not text.startswith("$"):
        raise BadPath(f"{text!r} must start with '$'")
    out: list[str | int] = []
    pos = 1
    while pos < len(text):
        m = _PATH_TOKEN.match(text, pos)
        if m is None:
            raise BadPath(f"{text!r}: cannot read from {text[pos:]!r}")
        if m.group(0) == "..":
            out.append(_DEEP)
            # "$..name": the next token is the bare name
            n = re.compile(r"([A-Za-z_$][\w$-]*|\*)").match(text, m.end())
            if n is not None:
                out.append(n.group(1))
                pos = n.end()
                continue
        elif m.group(1) is not None:
            out.append(m.group(1))
        else:
            idx = m.group(2)
            if idx == "*":
                out.append(_ANY_INDEX)
            elif idx.isdigit():
                out.append(int(idx))
            else:
                out.append(idx[1:-1])
        pos = m.end()
    return tuple(out)


def path_matches(pattern: Pattern, path: Sequence[Token]) -> bool:
    """Does a concrete path match a pattern? A pattern also matches everything below it."""
    if not pattern:
        return True
    head = pattern[0]
    if head == _DEEP:
        rest = pattern[1:]
        return any(path_matches(rest, path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    tok = path[0]
    if head == "*":
        ok = isinstance(tok, str)
    elif head == _ANY_INDEX:
        ok = isinstance(tok, int)
    else:
        ok = head == tok
    return ok and path_matches(pattern[1:], path[1:])


def render_path(path: Iterable[Token]) -> str:
    out = ["$"]
    for tok in path:
        if isinstance(tok, int):
            out.append(f"[{tok}]")
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", tok):
            out.append(f".{tok}")
        else:
            out.append("['" + tok.replace("'", "\\'") + "']")
    return "".join(out)


# --------------------------------------------------------------------------- normalising


def _norm_str(s: str, normalise: tuple[str, ...]) -> str:
    if "uuid" in normalise:
        s = UUID.sub("<uuid>", s)
    if "timestamp" in normalise:
        s = TIMESTAMP.sub("<timestamp>", s)
    return s


def _norm_value(key: Token | None, v: Any, normalise: tuple[str, ...]) -> Any:
    if isinstance(v, str):
        return _norm_str(v, normalise)
    if (
        "id" in normalise
        and isinstance(v, int)
        and not isinstance(v, bool)
        and isinstance(key, str)
        and _ID_KEY.match(key)
    ):
        return "<id>"
    return v


def _walk(
    a: Any,
    b: Any,
    path: list[Token],
    ignore: list[Pattern],
    normalise: tuple[str, ...],
    out: list[tuple[tuple[Token, ...], Any, Any]],
) -> None:
    if ignore and any(path_matches(p, path) for p in ignore):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            path.append(k)
            _walk(a.get(k, _MISSING), b.get(k, _MISSING), path, ignore, normalise, out)
            path.pop()
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            path.append(i)
            _walk(
                a[i] if i < len(a) else _MISSING,
                b[i] if i < len(b) else _MISSING,
                path, ignore, normalise, out,
            )  # fmt: skip
            path.pop()
        return
    key = path[-1] if path else None
    na, nb = _norm_value(key, a, normalise), _norm_value(key, b, normalise)
    # bool is an int in Python: 1 == True must still differ on the wire
    if na != nb or type(na) is not type(nb):
        out.append((tuple(path), _short(a), _short(b)))


def _short(v: Any, limit: int = 200) -> Any:
    """A value as a difference shows it: containers are summarised, long text cut."""
    if isinstance(v, dict):
        return f"{{…{len(v)} keys}}"
    if isinstance(v, list):
        return f"[…{len(v)} items]"
    if isinstance(v, str) and len(v) > limit:
        return v[:limit] + "…"
    return v


def _json(body: bytes) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, None


# --------------------------------------------------------------------------- SSE


def parse_sse(body: bytes) -> tuple[str, Any]:
    """An event stream as (reassembled text, final event).

    The text is the concatenation of every event's ``delta`` (or of the raw data of an
    event that is not JSON); the final event is the last event's data, parsed as JSON when
    it is JSON. Chunking differences (how the pieces were cut) therefore do not count.
    """
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    events: list[str] = []
    for block in text.split("\n\n"):
        data = [ln[5:].removeprefix(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if data:
            events.append("\n".join(data))
    pieces: list[str] = []
    for ev in events[:-1]:
        ok, value = _json(ev.encode())
        if ok and isinstance(value, dict) and isinstance(value.get("delta"), str):
            pieces.append(value["delta"])
        else:
            pieces.append(ev)
    final: Any = None
    if events:
        ok, value = _json(events[-1].encode())
        final = value if ok else events[-1]
    return "".join(pieces), final


# --------------------------------------------------------------------------- entry point


def _differences(a: Exchange, b: Exchange, rules: CompareRules) -> list[Difference]:
    out: list[Difference] = []
    if a.status != b.status:
        out.append(Difference("status", a.status, b.status))
    for name in rules.headers:
        ha, hb = a.header(name), b.header(name)
        if ha is not None and hb is not None:
            ha, hb = _norm_str(ha, rules.normalise), _norm_str(hb, rules.normalise)
        if ha != hb:
            out.append(Difference(f"headers.{name}", ha, hb))
    ignore = [parse_json_path(p) for p in rules.ignore]
    ctype = (a.header("content-type") or b.header("content-type") or "").lower()
    found: list[tuple[tuple[Token, ...], Any, Any]] = []
    if "text/event-stream" in ctype:
        ta, fa = parse_sse(a.body)
        tb, fb = parse_sse(b.body)
        ta, tb = _norm_str(ta, rules.normalise), _norm_str(tb, rules.normalise)
        if ta != tb:
            out.append(Difference("sse.text", _short(ta), _short(tb)))
        _walk(fa, fb, [], ignore, rules.normalise, found)
        out.extend(Difference("sse.final" + render_path(p), x, y) for p, x, y in found)
        return out
    if a.body == b.body:
        return out
    if "json" in ctype:
        oka, ja = _json(a.body)
        okb, jb = _json(b.body)
        if oka and okb:
            _walk(ja, jb, [], ignore, rules.normalise, found)
            out.extend(Difference(render_path(p), x, y) for p, x, y in found)
            return out
    if ctype.startswith("text/") or "json" in ctype:
        ta = _norm_str(a.body.decode("utf-8", "replace"), rules.normalise)
        tb = _norm_str(b.body.decode("utf-8", "replace"), rules.normalise)
        if ta != tb:
            out.append(Difference("$", _short(ta), _short(tb)))
        return out
    out.append(Difference("$", f"<{len(a.body)} bytes>", f"<{len(b.body)} bytes>"))
    return out


def compare(
    primary: Exchange, shadow: Exchange, rules: CompareRules, noise: Exchange | None = None
) -> Result:
    """Differences between the primary and the shadow answer, less the noisy ones.

    ``noise`` is a second answer of the primary side to the same request: wherever it
    differs from ``primary`` the value is volatile, so a shadow difference there is noise.
    """
    diffs = _differences(primary, shadow, rules)
    if noise is None or not diffs:
        return Result(diffs)
    noisy_paths = {d.path for d in _differences(primary, noise, rules)}
    kept = [d for d in diffs if d.path not in noisy_paths]
    noisy = sorted({d.path for d in diffs if d.path in noisy_paths})
    return Result(kept, noisy)
