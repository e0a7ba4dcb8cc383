"""deploy/grafana-dashboard.json only charts metrics that the services expose."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.shared.observability import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
# What the issue asks the dashboard to show, as metric name fragments.
REQUIRED = {
    "throughput": "envelope_mq_messages_published_total",
    "consumption": "envelope_mq_messages_handled_total",
    "confirms": "envelope_mq_messages_confirmed_total",
    "nacks": "envelope_mq_messages_nacked_total",
    "returns": "envelope_mq_messages_returned_total",
    "quarantine": "envelope_mq_messages_quarantined_total",
    "kms latency": "envelope_mq_kms_request_duration_seconds_bucket",
    "kms errors": "envelope_mq_kms_requests_total",
    "cache hits": "envelope_mq_key_cache_hits_total",
    "reconnects": "envelope_mq_reconnects_total",
    "seal time": "envelope_mq_seal_duration_seconds_bucket",
    "open time": "envelope_mq_open_duration_seconds_bucket",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _exposed_sample_names() -> set[str]:
    metrics = Metrics()
    # Touch the labelled families so that each has samples to name.
    metrics.quarantined("malformed")
    metrics.broker_connected("consumer", reconnect=True)
    metrics.kms_call("Decrypt", "ok", 0.01)
    return {
        sample.name
        for family in metrics.registry.collect()
        for sample in family.samples
    }


def test_every_charted_metric_is_exposed(dashboard: dict[str, Any]) -> None:
    exposed = _exposed_sample_names()
    # cache and rotation families only have samples once a cache is watched
    exposed |= {
        "envelope_mq_key_cache_hits_total",
        "envelope_mq_key_cache_misses_total",
        "envelope_mq_key_cache_evictions_total",
        "envelope_mq_key_cache_entries",
        "envelope_mq_data_key_rotations_total",
    }
    charted = {
        name
        for expr in _exprs(dashboard)
        for name in re.findall(r"\b(envelope_mq_[a-z_]+)", expr)
    }
    assert charted, "the dashboard charts nothing"
    assert charted <= exposed, sorted(charted - exposed)


@pytest.mark.parametrize("what", sorted(REQUIRED))
def test_dashboard_shows(dashboard: dict[str, Any], what: str) -> None:
    assert any(REQUIRED[what] in expr for expr in _exprs(dashboard))


def test_kms_latency_shows_p50_and_p99(dashboard: dict[str, Any]) -> None:
    latency = [e for e in _exprs(dashboard) if "kms_request_duration" in e]
    assert any(e.startswith("histogram_quantile(0.5,") for e in latency)
    assert any(e.startswith("histogram_quantile(0.99,") for e in latency)


def test_panels_use_the_datasource_variable_and_unique_ids(
    dashboard: dict[str, Any],
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
