"""The Grafana dashboard and the alert rules use metrics that exist, in valid PromQL."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import flower
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.files import DEPLOY, ROOT
from worker.errors import CODES, State
from worker.runtime import metrics

DASHBOARD = DEPLOY / "grafana" / "dcmpress.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
# Grafana's variables, replaced by what Grafana would send
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$queue": "dcmpress"}
# series that do not come from dcmpress: where each is defined
EXTERNAL = {
    "redis_key_size": "redis_exporter --check-single-keys",
    "redis_memory_used_bytes": "redis_exporter",
    "redis_memory_max_bytes": "redis_exporter",
    "keda_scaler_metrics_value": "KEDA operator",
    "up": "Prometheus",
}
# label values of our metrics, as the code uses them
RETRY_REASONS = set(
    re.findall(r'RETRIES\.labels\("(\w+)"\)', (ROOT / "worker/runtime/tasks.py").read_text())
)


def _our_series() -> dict[str, set[str]]:
    """Series name -> label names, for every metric worker/runtime/metrics.py defines."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        name, kind = value._name, value._type
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[name] = labels
    return series


def _flower_series() -> set[str]:
    source = (Path(flower.__file__).parent / "events.py").read_text()
    return set(re.findall(r"['\"](flower_[a-z_]+)['\"]", source))


def _selectors(expr: str) -> list[promql_parser.VectorSelector]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    parsed = promql_parser.parse(expr)  # raises ValueError on invalid PromQL
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(parsed, visit)
    return found


def _check_expression(expr: str) -> set[str]:
    """Parse ``expr``; every series it reads must exist, with the labels it matches."""
    ours = _our_series()
    names: set[str] = set()
    for selector in _selectors(expr):
        name = str(selector.name)
        names.add(name)
        matchers = {m.name: m for m in selector.matchers.matchers}
        if name in ours:
            unknown = set(matchers) - ours[name] - {"job", "instance"}
            assert not unknown, f"{name} has no label {unknown}: {expr}"
            if "outcome" in matchers:
                assert matchers["outcome"].value in typing.get_args(State), expr
            if "code" in matchers and matchers["code"].op == promql_parser.MatchOp.Re:
                assert set(matchers["code"].value.split("|")) <= set(CODES), expr
            if "reason" in matchers:
                assert matchers["reason"].value in RETRY_REASONS, expr
        else:
            assert name in EXTERNAL or name in _flower_series(), f"unknown series {name}: {expr}"
    return names


def _dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_dashboard_query_is_valid_promql_over_series_that_exist() -> None:
    used: set[str] = set()
    for title, expr in _dashboard_targets():
        try:
            used |= _check_expression(expr)
        except ValueError as exc:
            pytest.fail(f"{title}: {exc}: {expr}")
    assert set(_our_series()) - {"dcmpress_stage_seconds_count"} <= used  # all shown


def test_dashboard_shows_what_an_operator_asks_first() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in (
        "Objects / s by outcome",
        "MB/s in and out",
        "Ratio",
        "Stage seconds p95",
        "Failed objects / s by code",
        "Queue depth",
    ):
        assert any(title.startswith(wanted) for title in titles), wanted
    queries = dict(_dashboard_targets())
    assert "histogram_quantile(0.99" in queries["Stage seconds p99"]
    # no queue metric of our own: the panel says where the numbers come from
    queue = next(p for p in dashboard["panels"] if p["title"] == "Queue depth")
    assert "redis_exporter" in queue["description"] and "KEDA" in queue["description"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "queue"}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_cover_progress_failures_retries_and_queue_age() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    for wanted in (
        "DcmpressNoProgress",
        "DcmpressFailureRate",
        "DcmpressRetryStorm",
        "DcmpressQueueAge",
    ):
        assert wanted in rules
    for name, rule in rules.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        _check_expression(rule["expr"])


def test_no_progress_waits_longer_than_any_task_may_run() -> None:
    from worker.settings import WorkerSettings

    rule = next(rule for rule in _rules() if rule["alert"] == "DcmpressNoProgress")
    window = re.search(r"increase\(dcmpress_objects_total\[(\d+)m\]\)", rule["expr"])
    assert window
    assert int(window.group(1)) * 60 > WorkerSettings.model_fields["task_time_limit"].default
