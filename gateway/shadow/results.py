"""Shadow results: counters, a per-route window for the guard, and redacted samples.

``gateway_shadow_results_total{route, result}`` with result ``match``, ``mismatch``,
``error`` (the shadow side failed or timed out), ``dropped`` (the queue was full) and
``too_large`` (a body over the route's ``max_body``: counted, never mirrored silently).

:meth:`ShadowResults.mismatch_rate` is the share of mismatches among the compared copies of
the last ``window`` seconds (None below ``min_count`` of them): the guard can roll a route
back on it. Samples of mismatches are kept in a ring buffer (``settings.shadow.samples``),
with ``Authorization``, cookies, ``?token=`` and the route's ``compare.redact`` body fields
replaced by ``[redacted]`` before they are stored.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import orjson
from prometheus_client import CollectorRegistry, Counter

ResultKind = Literal["match", "mismatch", "error", "dropped", "too_large"]
RESULTS: tuple[ResultKind, ...] = ("match", "mismatch", "error", "dropped", "too_large")
REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-gateway-force"}
)
_TOKEN_QS = re.compile(r"((?:^|[?&])(?:token|access_token)=)[^&]*")
_EXCERPT = 2048


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers]


def redact_query(target: str) -> str:
    return _TOKEN_QS.sub(lambda m: m.group(1) + REDACTED, target)


def _redact_value(v: Any, fields: frozenset[str]) -> Any:
    if isinstance(v, dict):
        return {k: REDACTED if k in fields else _redact_value(x, fields) for k, x in v.items()}
    if isinstance(v, list):
        return [_redact_value(x, fields) for x in v]
    return v


def redact_body(body: bytes, fields: Iterable[str], limit: int = _EXCERPT) -> str:
    """A body as a sample shows it: JSON with ``fields`` blanked (at any depth), cut at
    ``limit``; a body that is not JSON is shown as text only when no field is configured
    to be redacted (we could not tell where the secret is), else by length."""
    names = frozenset(fields)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        if names and body:
            return f"<{len(body)} bytes, not JSON: withheld>"
        text = body.decode("utf-8", "replace")
        return text if len(text) <= limit else text[:limit] + "…"
    text = orjson.dumps(_redact_value(value, names)).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def redact_differences(diffs: list[dict[str, Any]], fields: Iterable[str]) -> list[dict[str, Any]]:
    names = frozenset(fields) | {"authorization", "cookie", "set-cookie", "token", "password"}
    out = []
    for d in diffs:
        last = re.split(r"[.\[\]']+", d["path"].strip("]'"))[-1]
        if last.lower() in names or last in names:
            d = {**d, "primary": REDACTED, "shadow": REDACTED}
        out.append(d)
    return out


class ShadowResults:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        samples: int = 200,
        window: float = 300.0,
        min_count: int = 20,
    ) -> None:
        self.counter = Counter(
            "gateway_shadow_results",
            "Shadow copies by outcome (match, mismatch, error, dropped, too_large)",
            ["route", "result"],
            registry=registry,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self.totals: dict[str, dict[str, int]] = {}
        self.window = window
        self.min_count = min_count
        self._recent: dict[str, deque[tuple[float, bool]]] = {}
        self.samples: deque[dict[str, Any]] = deque(maxlen=samples)

    def resize(self, samples: int) -> None:
        if self.samples.maxlen != samples:
            self.samples = deque(self.samples, maxlen=samples)

    def count(self, route: str, result: ResultKind, n: int = 1) -> None:
        """``n`` copies of ``route`` ended with ``result`` (a worker process reports a
        batch's outcomes together)."""
        key = (route, result)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.counter.labels(route, result)
        child.inc(n)
        per = self.totals.setdefault(route, dict.fromkeys(RESULTS, 0))
        per[result] += n
        if result in ("match", "mismatch"):
            now = time.monotonic()
            recent = self._recent.setdefault(route, deque())
            recent.extend(itertools.repeat((now, result == "match"), n))
            self._trim(recent, now)

    def _trim(self, recent: deque[tuple[float, bool]], now: float) -> None:
        while recent and recent[0][0] < now - self.window:
            recent.popleft()

    def add_sample(self, sample: dict[str, Any]) -> None:
        """Store one mismatch sample; the caller has redacted it (see :func:`redact_body`)."""
        self.samples.append(sample)

    def mismatch_rate(self, route: str) -> float | None:
        """Mismatches / compared copies over the window; None with too few copies."""
        recent = self._recent.get(route)
        if not recent:
            return None
        self._trim(recent, time.monotonic())
        if len(recent) < self.min_count:
            return None
        return sum(1 for _, ok in recent if not ok) / len(recent)

    def rates(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for route, counts in sorted(self.totals.items()):
            compared = counts["match"] + counts["mismatch"]
            recent = self._recent.get(route) or deque()
            self._trim(recent, time.monotonic())
            matched = sum(1 for _, ok in recent if ok)
            out[route] = {
                "counts": dict(counts),
                "match_rate": counts["match"] / compared if compared else None,
                "window": {
                    "seconds": self.window,
                    "compared": len(recent),
                    "match_rate": matched / len(recent) if recent else None,
                },
                "mismatch_rate": self.mismatch_rate(route),
            }
        return out

    def sample_list(self, route: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        items = [s for s in reversed(self.samples) if route is None or s["route"] == route]
        return items[:limit]
