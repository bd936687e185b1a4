"""The pipe protocol between the serving process and the shadow worker (isolation: process),
frame by frame: what the serving process writes in a hand-off batch, and how the worker's
outcomes come back summed. The whole path through real processes is in test_isolation.py."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import parse_config
from gateway.shadow.mirror import Tap
from gateway.shadow.process import _LEN, SCOPE_KEYS, frame, handoff_frames
from gateway.shadow.results import ShadowResults
from gateway.shadow.worker import RESULT_DELAY, RelayedResults

CONFIG = """
upstreams:
  legacy: {url: "http://127.0.0.1:9"}
routes:
  - name: items
    match: {path: "/api/items/{id}"}
    legacy: legacy
    module: shadowtest
    shadow: {percent: 100}
"""


def _tap(path: str, body: bytes = b"{}") -> Tap:
    route = parse_config(CONFIG, env={}).routes[0]
    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"host", b"gw")], "http_version": "1.1",
        "app": object(), "state": {"not": "sent"},
    }  # fmt: skip
    tap = Tap(route, "legacy", scope, 1 << 20, mirror=True, record=False)
    tap.answered(200, [(b"content-type", b"application/json")], body)
    tap.headers = [(b"host", b"gw")]
    return tap


def _frames(data: bytes) -> list[object]:
    out, at = [], 0
    while at < len(data):
        (n,) = _LEN.unpack_from(data, at)
        out.append(pickle.loads(data[at + _LEN.size : at + _LEN.size + n]))  # noqa: S301
        at += _LEN.size + n
    return out


def test_a_batch_sends_each_run_of_copies_as_one_frame_in_order_with_the_others() -> None:
    config, weights = frame(("config", "c")), frame(("weights", {"items": 5}))
    items = [
        (1, _tap("/api/items/1")),
        (2, _tap("/api/items/2")),
        config,
        (3, _tap("/api/items/3")),
        weights,
    ]
    got = _frames(b"".join(handoff_frames(items, _no_failure)))
    assert [f[0] for f in got] == ["taps", "config", "taps", "weights"]  # type: ignore[index]
    first, _, second, _ = got
    assert [t[0] for t in first[1]] == [1, 2]  # type: ignore[index]
    assert [t[0] for t in second[1]] == [3]  # type: ignore[index]
    # a copy carries the request as the worker rebuilds it, and nothing of the server's own
    job, name, primary, scope, limit, body, headers, status, resp_raw, resp_body = first[1][0]  # type: ignore[index]
    assert (job, name, primary, limit, status) == (1, "items", "legacy", 1 << 20, 200)
    assert body == [] and headers == [(b"host", b"gw")]
    assert set(scope) <= set(SCOPE_KEYS) and scope["path"] == "/api/items/1"
    assert "app" not in scope and "state" not in scope
    assert resp_raw == [(b"content-type", b"application/json")] and resp_body == [b"{}"]


def _no_failure(job: int) -> None:
    raise AssertionError(f"copy {job} reported as not handed over")


def test_a_copy_that_cannot_be_pickled_is_reported_and_the_others_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = _tap("/api/items/2")
    bad.resp_raw = [(b"x-odd", lambda: None)]  # type: ignore[list-item]
    failed: list[int] = []
    items = [(1, _tap("/api/items/1")), (2, bad), (3, _tap("/api/items/3"))]
    got = _frames(b"".join(handoff_frames(items, failed.append)))
    assert failed == [2]
    assert [t[0] for f in got for t in f[1]] == [1, 3]  # type: ignore[index]
    assert "could not be handed over" in caplog.text


def test_the_primary_answers_headers_are_decoded_by_whoever_compares_not_on_the_request() -> None:
    tap = _tap("/api/items/1")
    assert tap.resp_raw == [(b"content-type", b"application/json")]
    assert tap.resp_headers == [("content-type", "application/json")]
    assert tap.primary_exchange().header("content-type") == "application/json"


def test_counts_of_several_copies_land_at_once() -> None:
    registry = CollectorRegistry()
    results = ShadowResults(registry, samples=10, min_count=4)
    results.count("items", "match", 3)
    results.count("items", "mismatch")
    assert results.totals["items"]["match"] == 3 and results.totals["items"]["mismatch"] == 1
    assert results.mismatch_rate("items") == 0.25  # the guard's window holds all four
    labels = {"route": "items", "result": "match"}
    assert registry.get_sample_value("gateway_shadow_results_total", labels) == 3


def test_the_worker_sums_a_batchs_outcomes_per_route_and_result() -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
        relayed = RelayedResults(transport)  # type: ignore[arg-type]
        for job in (1, 2, 3):
            relayed.count("items", "match")
            relayed.done(job)
        relayed.count("items", "mismatch")
        relayed.add_sample({"route": "items"})
        relayed.done(4)
        await asyncio.sleep(RESULT_DELAY * 3)  # one batch, written once
        transport.close()
        os.set_blocking(r, False)
        try:
            return _frames(os.read(r, 1 << 16))
        finally:
            os.close(r)

    (events,) = asyncio.run(main())
    kinds = {e[0]: e for e in events}  # type: ignore[attr-defined]
    assert kinds["counts"][1] == {("items", "match"): 3, ("items", "mismatch"): 1}
    assert kinds["done"][1] == [1, 2, 3, 4]
    assert kinds["sample"][1] == {"route": "items"}
    assert kinds["cpu"][1] > 0
