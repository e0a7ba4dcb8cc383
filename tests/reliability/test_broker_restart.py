"""A private rabbitmq-server node with a quorum queue, stopped and started."""

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

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.rabbitmq_node import RabbitNode

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MESSAGES = 5_000


def wait_for_settled(ledger: MessageLedger, count: int) -> None:
    assert ledger.wait_settled(PATIENCE, at_least=count), ledger.report()


def test_quorum_queue_node_stopped_and_started_loses_nothing(
    emq_kms: KmsFixture, emq_rabbitmq_node: RabbitNode
) -> None:
    ledger = MessageLedger("private node with a quorum queue stopped and started")
    topology = scenario_topology(
        "emq-restart", "emq-restart-x", queue_type="quorum", expires=False
    )
    urls = [emq_rabbitmq_node.url]
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
            wait_for_settled(ledger, MESSAGES // 4)
            started = time.monotonic()
            emq_rabbitmq_node.stop()
            ledger.fault("node stops (rabbitmqctl stop)", 1)
            emq_rabbitmq_node.start()
            ledger.fault("node starts", 1)
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
