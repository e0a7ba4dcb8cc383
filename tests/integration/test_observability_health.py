"""/readyz follows the broker connection: not ready when it drops, ready again after.

The services reach the broker through a TCP proxy that the test cuts and
refuses, and serve /readyz and /healthz with ObservabilityServer, as the
commands do with --metrics-port.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher, TransportOptions
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.observability import HealthState, Metrics, ObservabilityServer

from envelope_mq.testing.faultproxy import FaultProxy, ResetPeer

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


def probe(server: ObservabilityServer, path: str) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def wait_status(
    server: ObservabilityServer, path: str, status: int
) -> dict[str, object]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        code, body = probe(server, path)
        if code == status:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{path} stayed {code} {body}, never {status}")
        time.sleep(0.05)


@pytest.fixture
def observed() -> Iterator[tuple[Metrics, ObservabilityServer]]:
    health = HealthState()
    metrics = Metrics(health=health)
    with ObservabilityServer(health, metrics.registry, port=0) as server:
        yield metrics, server


def test_consumer_readiness_flips_with_the_broker_connection(
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    observed: tuple[Metrics, ObservabilityServer],
) -> None:
    metrics, server = observed
    assert probe(server, "/readyz")[0] == 503  # nothing connected yet
    settings = dataclasses.replace(
        emq_consumer_settings,
        rabbitmq_urls=tuple(
            emq_rabbitmq_proxy.rewrite(u) for u in emq_consumer_settings.rabbitmq_urls
        ),
    )

    def handler(message: ReceivedMessage) -> None:
        """Nothing is published: the test watches the connection only."""

    consumer = EncryptedConsumer.from_settings(
        settings,
        emq_amqp_topology,
        handler,
        reconnect_backoff=Backoff(initial=0.1, cap=0.3),
        metrics=metrics,
    )
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    try:
        body = wait_status(server, "/readyz", 200)
        assert body["checks"] == {"consumer.broker": "ok"}
        assert probe(server, "/healthz")[0] == 200

        refusing = emq_rabbitmq_proxy.add(ResetPeer())  # new connections: reset
        emq_rabbitmq_proxy.reset_all()
        body = wait_status(server, "/readyz", 503)
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert checks["consumer.broker"] != "ok"
        assert probe(server, "/healthz")[0] == 200  # alive: it is reconnecting

        emq_rabbitmq_proxy.remove(refusing)
        wait_status(server, "/readyz", 200)
    finally:
        consumer.stop()
        runner.join(TIMEOUT)
    assert not runner.is_alive()
    reconnects = metrics.registry.get_sample_value(
        "envelope_mq_reconnects_total", {"component": "consumer"}
    )
    assert reconnects == 1
    # stopped on purpose: no longer part of readiness or liveness
    checks = probe(server, "/readyz")[1]["checks"]
    assert isinstance(checks, dict)
    assert "consumer.broker" not in checks


def test_publisher_readiness_flips_with_the_broker_connection(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    observed: tuple[Metrics, ObservabilityServer],
) -> None:
    metrics, server = observed
    urls = tuple(
        emq_rabbitmq_proxy.rewrite(u) for u in emq_producer_settings.rabbitmq_urls
    )
    settings = dataclasses.replace(emq_producer_settings, rabbitmq_urls=urls)
    options = TransportOptions(initial_backoff=0.1, max_backoff=0.3)
    with EncryptedPublisher.from_settings(
        settings, topology=emq_amqp_topology, options=options, metrics=metrics
    ) as publisher:
        publisher.send(b"before the cut")
        body = wait_status(server, "/readyz", 200)
        assert body["checks"] == {"kms": "ok", "publisher.broker": "ok"}

        refusing = emq_rabbitmq_proxy.add(ResetPeer())  # new connections: reset
        emq_rabbitmq_proxy.reset_all()
        wait_status(server, "/readyz", 503)
        pending = publisher.publish(b"during the outage")

        emq_rabbitmq_proxy.remove(refusing)
        wait_status(server, "/readyz", 200)
        assert pending.result(TIMEOUT)
    assert (
        metrics.registry.get_sample_value(
            "envelope_mq_reconnects_total", {"component": "publisher"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value("envelope_mq_messages_confirmed_total") == 2
    )
