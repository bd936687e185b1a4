"""Monitoring files: promtool checks and unit tests the alert rules, and the Grafana
dashboard and the alerts name only metrics the gateway exports.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml
from deploy_helpers import MONITORING, ROOT, need, tool

# Metrics that other parts of issue 8 and the control plane add; the alerts and panels may
# name them before they land (a query on an absent metric is empty, not an error).
UPCOMING = {
    "gateway_shadow_results_total",
    "gateway_guard_rollbacks_total",
    "gateway_config_reload_failures_total",
    "gateway_control_store_up",
}
PROMETHEUS_OWN = {"up"}

# prometheus_client metrics, and the families a custom collector yields (gateway/metrics.py)
_DEF = re.compile(
    r'\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*"([a-z_:][a-z0-9_:]*)"', re.S
)
_SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count", ""),
}


def exported_metrics() -> set[str]:
    """Series names the gateway's code defines (prometheus_client calls in gateway/)."""
    names: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for kind, name in _DEF.findall(path.read_text(encoding="utf-8")):
            base = name.removesuffix("_total") if kind == "Counter" else name
            names.update(base + s for s in _SUFFIXES[kind])
    return names


def known_metrics() -> set[str]:
    return exported_metrics() | UPCOMING | PROMETHEUS_OWN


_FUNCS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count",
    "by", "without", "and", "or", "unless", "offset", "on", "ignoring", "group_left",
    "max_over_time", "min_over_time", "avg_over_time", "label_values", "topk", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings, variables removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words - _FUNCS if not re.fullmatch(r"\d.*|[a-z]", w)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = tool("promtool")
    need(exe is not None, "promtool is not installed (apt-get install prometheus)")
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(MONITORING / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_config() -> None:
    out = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests() -> None:
    out = promtool("test", "rules", str(MONITORING / "alerts_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_every_alert_has_severity_for_and_runbook() -> None:
    runbook_sections = set()
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("deploy/RUNBOOK.md#"), url
        runbook_sections.add(url.partition("#")[2])
        assert rule["annotations"]["summary"]
        counter_event = "increase(" in rule["expr"]
        assert "for" in rule or counter_event, f"{rule['alert']}: no `for:` duration"
    assert len(runbook_sections) >= 8


def test_alerts_cover_the_migration_targets() -> None:
    exprs = " ".join(r["expr"] for r in _rules())
    for needle in (
        'status="5xx"', "histogram_quantile(0.95", "> 0.1", "> 0.001",
        "gateway_shadow_results_total", "gateway_guard_rollbacks_total",
        "gateway_upstream_errors_total", "gateway_config_reload_failures_total",
        "gateway_websockets_open",
    ):  # fmt: skip
        assert needle in exprs, needle


def test_alerts_name_only_known_metrics() -> None:
    known = known_metrics()
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} names unknown metrics {unknown}"


def test_exported_metrics_are_found() -> None:
    names = exported_metrics()
    assert {
        "gateway_requests_total", "gateway_request_duration_seconds_bucket",
        "gateway_upstream_errors_total", "gateway_websockets_open", "gateway_route_new_percent",
    } <= names  # fmt: skip


def test_grafana_dashboard_panels_query_known_metrics() -> None:
    dash = json.loads((MONITORING / "grafana" / "chat-gateway.json").read_text(encoding="utf-8"))
    assert dash["uid"] == "chat-gateway"
    known = known_metrics()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    seen: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            assert names <= known, f"{panel['title']}: unknown metrics {names - known}"
            seen |= names
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(METRIC, LABEL)
            assert metric_names(var["query"].split(",")[0]) <= known
    # The panels the brief asks for, by the metric each needs.
    assert seen >= {
        "gateway_requests_total", "gateway_request_duration_seconds_bucket",
        "gateway_route_new_percent", "gateway_websockets_open", "gateway_upstream_errors_total",
        "gateway_shadow_results_total", "gateway_guard_rollbacks_total",
    }  # fmt: skip


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    prov = MONITORING / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((prov / "dashboards" / "chat-gateway.yml").read_text("utf-8"))
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
