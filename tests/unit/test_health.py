"""Health state and the metrics port: /healthz, /readyz and /metrics over HTTP."""

from __future__ import annotations

import argparse
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.observability import (
    HealthState,
    Metrics,
    ObservabilityServer,
    add_observability_arguments,
    observability,
)
from fakes import Clock


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return (
                response.status,
                response.headers["Content-Type"],
                response.read().decode(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def health() -> HealthState:
    return HealthState()


@pytest.fixture
def server(health: HealthState) -> Iterator[tuple[ObservabilityServer, Metrics]]:
    metrics = Metrics(health=health)
    with ObservabilityServer(health, metrics.registry, port=0) as running:
        yield running, metrics


def test_not_ready_until_something_is_reported() -> None:
    report = HealthState().readiness()
    assert not report.ok
    assert report.checks == {"service": "starting: nothing reported yet"}


def test_ready_only_when_every_component_is() -> None:
    health = HealthState()
    health.set_ready("consumer.broker", True)
    health.set_ready("kms", False, "KMS Decrypt: unavailable")
    report = health.readiness()
    assert not report.ok
    assert report.checks == {
        "consumer.broker": "ok",
        "kms": "KMS Decrypt: unavailable",
    }
    health.set_ready("kms", True)
    assert health.readiness().ok


def test_a_fallback_keeps_a_component_ready() -> None:
    health = HealthState()
    cached = [False]
    health.add_fallback("kms", lambda: cached[0])
    health.set_ready("kms", False, "KMS down")
    assert not health.readiness().ok
    cached[0] = True
    report = health.readiness()
    assert report.ok
    assert report.checks["kms"] == "ok (fallback; KMS down)"


def test_liveness_fails_when_a_loop_stops_beating() -> None:
    clock = Clock()
    health = HealthState(stall_after=30, clock=clock)
    assert health.liveness().ok  # no loop registered: the process is up
    health.beat("consumer")
    health.beat("publisher")
    clock.now += 29
    health.beat("publisher")
    assert health.liveness().ok
    clock.now += 2
    report = health.liveness()
    assert not report.ok
    assert report.checks == {"consumer": "no beat for 31 s", "publisher": "ok"}
    health.forget("consumer")
    assert health.liveness().ok


def test_stall_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthState(stall_after=0)


def test_readyz_answers_503_then_200(
    server: tuple[ObservabilityServer, Metrics],
) -> None:
    running, metrics = server
    base = f"http://127.0.0.1:{running.port}"
    status, content_type, body = get(f"{base}/readyz")
    assert status == 503
    assert content_type == "application/json"
    assert json.loads(body)["status"] == "fail"
    metrics.broker_connected("consumer", reconnect=False)
    status, _, body = get(f"{base}/readyz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "checks": {"consumer.broker": "ok"}}
    metrics.broker_lost("consumer", "connection reset")
    status, _, body = get(f"{base}/readyz")
    assert status == 503
    assert json.loads(body)["checks"] == {"consumer.broker": "connection reset"}


def test_healthz_follows_the_beats(health: HealthState) -> None:
    clock = Clock()
    beating = HealthState(stall_after=10, clock=clock)
    with ObservabilityServer(beating, port=0) as running:
        base = f"http://127.0.0.1:{running.port}"
        beating.beat("consumer")
        assert get(f"{base}/healthz")[0] == 200
        clock.now += 11
        status, _, body = get(f"{base}/healthz")
        assert status == 503
        assert json.loads(body)["checks"]["consumer"] == "no beat for 11 s"


def test_metrics_endpoint_serves_the_instance_registry(
    server: tuple[ObservabilityServer, Metrics],
) -> None:
    running, metrics = server
    metrics.published()
    metrics.published()
    status, content_type, body = get(running.url)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "envelope_mq_messages_published_total 2.0" in body.splitlines()


def test_metrics_endpoint_speaks_openmetrics_when_asked(
    server: tuple[ObservabilityServer, Metrics],
) -> None:
    running, _ = server
    status, content_type, body = get(
        running.url, accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_unknown_paths_are_404(server: tuple[ObservabilityServer, Metrics]) -> None:
    running, _ = server
    assert get(f"http://127.0.0.1:{running.port}/nope")[0] == 404


def test_without_a_registry_there_is_no_metrics_endpoint(
    health: HealthState,
) -> None:
    with ObservabilityServer(health, port=0) as running:
        assert get(running.url)[0] == 404
        assert get(f"http://127.0.0.1:{running.port}/healthz")[0] == 200


def test_a_taken_port_is_a_config_error(health: HealthState) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            ObservabilityServer(health, port=port)


def test_close_releases_the_port(health: HealthState) -> None:
    running = ObservabilityServer(health, port=0).start()
    port = running.port
    running.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_url_names_a_reachable_host_for_a_wildcard_bind(health: HealthState) -> None:
    with ObservabilityServer(health, port=0, host="0.0.0.0") as running:  # noqa: S104
        assert running.url == f"http://127.0.0.1:{running.port}/metrics"
        assert get(running.url)[0] == 404  # no registry, but it answers


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_observability_arguments(parser)
    return parser.parse_args(list(argv))


def test_service_helper_serves_and_says_where() -> None:
    err = io.StringIO()
    with observability(
        _args("--metrics-port", "0"), "envelope-mq test", stderr=err
    ) as obs:
        assert obs.server is not None
        assert obs.health is not None
        obs.metrics.published()
        printed = err.getvalue()
        assert printed.startswith(f"envelope-mq test: metrics at {obs.server.url}")
        status, _, body = get(obs.server.url)
        assert status == 200
        assert "envelope_mq_messages_published_total 1.0" in body.splitlines()
    with pytest.raises(urllib.error.URLError):  # closed on exit
        get(obs.server.url)


def test_service_helper_without_a_port_hands_out_the_null_metrics() -> None:
    err = io.StringIO()
    with observability(_args(), "envelope-mq test", stderr=err) as obs:
        assert obs.server is None
        assert obs.health is None
        assert type(obs.metrics).__name__ == "NullMetrics"
    assert err.getvalue() == ""
