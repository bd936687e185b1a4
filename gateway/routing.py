"""Route matching: pure functions over the config, no I/O.

Precedence (most specific wins):

1. a ``path`` template beats a ``prefix``;
2. among templates (which only match paths with as many segments), a literal segment beats
   a ``{param}`` at the first position where two templates differ;
3. among prefixes, the longer one wins;
4. two routes that would be equally specific for some request (same shape, overlapping
   methods, same websocket flag) are a config error (:func:`route_conflicts`).

Matching runs on the percent-decoded path. :func:`normalise_path` refuses, before any
matching, every spelling that could make a path mean something else to the upstream:
``.`` and ``..`` segments, empty segments (``//``), an encoded slash (``%2F``), a
backslash (also ``%5C``) and NUL (also ``%00``). One trailing slash is tolerated, as the
legacy services tolerate it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from .config import Route

_FORBIDDEN_RAW = (b"%2f", b"%5c", b"%00", b"\\", b"\x00")

# Normalising and matching were ~10 % of the gateway's own CPU per request; both are pure,
# so the answers for recent short paths are remembered (at most 4096 × 256 bytes; a refused
# path raises again: exceptions are not cached).
_CACHE_SIZE = 4096
_CACHE_PATH_LEN = 256


class BadPath(ValueError):
    """A request path that is refused with 400 before matching."""


def normalise_path(raw_path: bytes) -> tuple[str, ...]:
    """The decoded segments of ``raw_path`` (without the query), or BadPath.

    >>> normalise_path(b"/api/sessions/abc/")
    ('api', 'sessions', 'abc')
    """
    if len(raw_path) <= _CACHE_PATH_LEN:
        return _normalise_cached(bytes(raw_path))
    return _normalise(raw_path)


def _normalise(raw_path: bytes) -> tuple[str, ...]:
    if not raw_path.startswith(b"/"):
        raise BadPath("path must start with '/'")
    if b"%" in raw_path:
        lowered = raw_path.lower()
        if any(bad in lowered for bad in _FORBIDDEN_RAW):
            raise BadPath("encoded slash, backslash or NUL in path")
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath("path is not UTF-8 once decoded") from None
    else:
        if b"\\" in raw_path or b"\x00" in raw_path:
            raise BadPath("backslash or NUL in path")
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadPath("raw non-ASCII bytes in path") from None
    if path == "/":
        return ()
    segments = path[1:].split("/")
    if segments[-1] == "":
        segments.pop()  # one trailing slash is tolerated
    for seg in segments:
        if seg in ("", ".", ".."):
            raise BadPath("empty, '.' or '..' segment in path")
    return tuple(segments)


_normalise_cached = lru_cache(maxsize=_CACHE_SIZE)(_normalise)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: dict[str, str]


def _methods_overlap(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    return a is None or b is None or bool(a & b)


def _allows(route: Route, method: str) -> bool:
    methods = route.match.methods
    return methods is None or method in methods


@dataclass(frozen=True, slots=True)
class _Template:
    route: Route
    segments: tuple[str | None, ...]  # literal, or None for a {param}
    params: tuple[tuple[int, str], ...]  # (position, name)
    rank: tuple[int, ...]  # 0 literal / 1 param per position: smaller is more specific


def _compile_template(route: Route) -> _Template:
    assert route.match.path is not None
    segs: list[str | None] = []
    params: list[tuple[int, str]] = []
    for i, seg in enumerate(
        route.match.path.strip("/").split("/") if route.match.path != "/" else []
    ):
        if seg.startswith("{"):
            segs.append(None)
            params.append((i, seg[1:-1]))
        else:
            segs.append(seg)
    return _Template(
        route, tuple(segs), tuple(params), tuple(0 if s is not None else 1 for s in segs)
    )


def _prefix_segments(route: Route) -> tuple[str, ...]:
    assert route.match.prefix is not None
    return tuple(s for s in route.match.prefix.split("/") if s)


class Router:
    """Compiled route table. ``match`` is the hot-path call (a few µs)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        # (websocket, number of segments) -> templates, most specific first
        self._templates: dict[tuple[bool, int], list[_Template]] = {}
        self._prefixes: dict[bool, list[tuple[tuple[str, ...], Route]]] = {False: [], True: []}
        self._cache: dict[tuple[tuple[str, ...], str, bool], RouteMatch | None] = {}
        for route in self.routes:
            ws = route.match.websocket
            if route.match.path is not None:
                t = _compile_template(route)
                self._templates.setdefault((ws, len(t.segments)), []).append(t)
            else:
                self._prefixes[ws].append((_prefix_segments(route), route))
        for bucket in self._templates.values():
            bucket.sort(key=lambda t: t.rank)
        for plist in self._prefixes.values():
            plist.sort(key=lambda p: -len(p[0]))

    def match(
        self, segments: Sequence[str], method: str, *, websocket: bool = False
    ) -> RouteMatch | None:
        if type(segments) is not tuple or sum(map(len, segments)) > _CACHE_PATH_LEN:
            return self._match(segments, method, websocket)
        key = (segments, method, websocket)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._match(segments, method, websocket)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _match(self, segments: Sequence[str], method: str, websocket: bool) -> RouteMatch | None:
        for t in self._templates.get((websocket, len(segments)), ()):
            for want, got in zip(t.segments, segments, strict=True):
                if want is not None and want != got:
                    break
            else:
                if websocket or _allows(t.route, method):
                    return RouteMatch(t.route, {name: segments[i] for i, name in t.params})
        n = len(segments)
        for pre, route in self._prefixes[websocket]:
            k = len(pre)
            if k <= n and tuple(segments[:k]) == pre and (websocket or _allows(route, method)):
                return RouteMatch(route, {})
        return None


def route_conflicts(routes: Sequence[Route]) -> list[tuple[int | None, str, str]]:
    """Pairs of routes equally specific for some request: (line, yaml path, message)."""
    out: list[tuple[int | None, str, str]] = []
    seen: list[tuple[tuple[object, ...], int, Route]] = []
    for i, route in enumerate(routes):
        m = route.match
        if m.path is not None:
            shape: tuple[object, ...] = ("path", m.websocket, _compile_template(route).segments)
        else:
            shape = ("prefix", m.websocket, _prefix_segments(route))
        for shape2, j, other in seen:
            if shape2 == shape and _methods_overlap(m.methods, other.match.methods):
                out.append((
                    route.line, f"routes[{i}].match",
                    f"route '{route.name}' ties with route '{other.name}' (routes[{j}]): "
                    f"same {'template' if m.path is not None else 'prefix'} {m.pattern} for the same "
                    "methods; give them disjoint 'methods' or remove one",
                ))  # fmt: skip
        seen.append((shape, i, route))
    return out
