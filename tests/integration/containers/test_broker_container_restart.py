"""RabbitMQ in a container, stopped (SIGTERM, as an orchestrator stops it) and
started again mid-stream: a durable quorum queue, persistent messages, lost = 0."""

from __future__ import annotations

import time

import pytest
from scenario_kit import (
    PATIENCE,
    ConsumerThread,
    QuarantineWatcher,
    check_with_reconnects,
    confirm_all,
    scenario_clients,
    scenario_topology,
    settle,
    stream_in_background,
)

from envelope_mq.testing.containers import RabbitContainer
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger

pytestmark = [
    pytest.mark.container,
    pytest.mark.integration,
    pytest.mark.reliability,
    pytest.mark.slow,
]

MESSAGES = 3_000


def test_broker_container_stopped_and_started_loses_nothing(
    emq_kms: KmsFixture, own_rabbitmq_container: RabbitContainer
) -> None:
    broker = own_rabbitmq_container
    ledger = MessageLedger("RabbitMQ container with a quorum queue stopped and started")
    topology = scenario_topology(
        "emq-restart", "emq-restart-x", queue_type="quorum", expires=False
    )
    urls = [broker.url]
    consumer, publisher = scenario_clients(emq_kms, urls, topology, ledger)
    # About 500 messages/s: the stream spans the stop and the start.
    producer, sent = stream_in_background(
        publisher,
        ledger,
        count=MESSAGES,
        size=300,
        tag="restart",
        pause_every=50,
        pause=0.1,
    )
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        with publisher:
            producer.start()
            assert ledger.wait_settled(PATIENCE, at_least=MESSAGES // 4)
            started = time.monotonic()
            broker.stop()
            ledger.fault("container stops (SIGTERM)", 1)
            broker.start()
            ledger.fault("container starts", 1)
            ledger.fault("seconds without a broker", round(time.monotonic() - started))
            producer.join(PATIENCE)
            errors = confirm_all(publisher, ledger, sent)
        settle(ledger)
    stats = publisher.stats()
    assert errors == []
    report = check_with_reconnects(ledger, publisher, consumer)
    assert report["quarantined"] == {}
    assert stats.reconnects >= 1
    assert consumer.stats.reconnects >= 1
