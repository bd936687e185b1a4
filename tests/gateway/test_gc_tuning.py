"""gateway.gc_tuning: the serving process's collector thresholds and the frozen start-up heap."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from gw_helpers import Upstreams, main_config, metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.gc_tuning import (
    DEFAULT_THRESHOLD,
    GC_ENV,
    apply_gc_threshold,
    freeze_startup_heap,
    gc_threshold,
)
from gateway.metrics import Metrics

MINIMAL = {
    "upstreams": {"x": {"url": "http://127.0.0.1:9"}},
    "routes": [{"name": "x", "match": {"prefix": "/x"}, "legacy": "x"}],
}


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("", DEFAULT_THRESHOLD),
        ("  ", DEFAULT_THRESHOLD),
        ("python", None),
        ("5000", (5000,)),
        ("5000, 20,30", (5000, 20, 30)),
        ("0", (0,)),
    ],
)
def test_the_threshold_comes_from_the_environment(raw: str, want: object) -> None:
    assert gc_threshold({GC_ENV: raw}) == want
    assert gc_threshold({}) == DEFAULT_THRESHOLD


@pytest.mark.parametrize("raw", ["abc", "1,2,3,4", "-5", "1.5", "700,,10", "Python"])
def test_a_malformed_threshold_is_refused_with_the_variable_and_the_reason(raw: str) -> None:
    with pytest.raises(ValueError) as err:
        gc_threshold({GC_ENV: raw})
    assert f"{GC_ENV}={raw!r}" in str(err.value)
    assert "non-negative integers" in str(err.value)


def test_applying_sets_the_thresholds_and_none_leaves_pythons(restore_gc: None) -> None:
    apply_gc_threshold((12345, 11, 12))
    assert gc.get_threshold() == (12345, 11, 12)
    apply_gc_threshold(None)
    assert gc.get_threshold() == (12345, 11, 12)


def test_freezing_moves_the_live_heap_out_of_the_collectors_way(restore_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() > 1000
    assert sum(gc.get_count()) < frozen
    # the generations a collection walks no longer hold them (only what came after)
    assert len(gc.get_objects()) < frozen


def test_metrics_report_the_thresholds_the_frozen_heap_and_pythons_collections(
    restore_gc: None,
) -> None:
    from prometheus_client import generate_latest

    apply_gc_threshold((4321, 9, 8))
    text = generate_latest(Metrics().registry).decode()
    assert metric(text, "gateway_gc_threshold", generation="0") == 4321
    assert metric(text, "gateway_gc_threshold", generation="2") == 8
    assert metric(text, "gateway_gc_frozen_objects") == gc.get_freeze_count()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "python_gc_collections" in names


def test_a_serving_gateway_runs_with_the_tuned_collector(
    upstreams: Upstreams, dead_port: int, start_gateway
) -> None:
    g = start_gateway(main_config(upstreams, dead_port))
    text = g.metrics()
    assert metric(text, "gateway_gc_threshold", generation="0") == DEFAULT_THRESHOLD[0]
    # the start-up heap (modules, routes, imported code) is frozen once serving
    assert metric(text, "gateway_gc_frozen_objects") > 10_000


def test_python_keeps_cpythons_own_collector(start_gateway) -> None:
    g = start_gateway(MINIMAL, **{GC_ENV: "python"})
    text = g.metrics()
    assert metric(text, "gateway_gc_threshold", generation="0") == 700
    assert metric(text, "gateway_gc_frozen_objects") == 0


def test_a_serving_gateway_takes_the_operators_threshold(start_gateway) -> None:
    g = start_gateway(MINIMAL, **{GC_ENV: "20000,5,5"})
    text = g.metrics()
    assert [metric(text, "gateway_gc_threshold", generation=str(i)) for i in range(3)] == [
        20000, 5, 5,
    ]  # fmt: skip


def test_a_malformed_threshold_stops_the_gateway_before_it_serves(start_gateway) -> None:
    with pytest.raises(RuntimeError, match=f"{GC_ENV}='lots': expected one to three"):
        start_gateway(MINIMAL, **{GC_ENV: "lots"})
