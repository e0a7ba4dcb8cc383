"""A private rabbitmq-server node with a quorum queue, stopped and started."""

from __future__ import annotations

import threading
import time

import pytest
from scenario_kit import (
    FAST_RECONNECT,
    PATIENCE,
    ConsumerThread,
    QuarantineWatcher,
    Sent,
    confirm_all,
    ledger_handler,
    publish_stream,
    quick_publisher_options,
    scenario_topology,
    settle,
)

from consumer.worker import EncryptedConsumer
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.rabbitmq_node import RabbitNode
from producer import EncryptedPublisher

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MESSAGES = 5_000


def wait_for_settled(ledger: MessageLedger, count: int) -> None:
    assert ledger.wait_settled(PATIENCE, at_least=count), ledger.report()


def test_quorum_queue_node_stopped_and_started_loses_nothing(
    kms: KmsFixture, rabbitmq_node: RabbitNode
) -> None:
    ledger = MessageLedger("private node with a quorum queue stopped and started")
    topology = scenario_topology(
        "emq-restart", "emq-restart-x", queue_type="quorum", expires=False
    )
    urls = [rabbitmq_node.url]
    consumer = EncryptedConsumer.from_settings(
        kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
    )
    publisher = EncryptedPublisher.from_settings(
        kms.settings("producer", urls),
        topology=topology,
        options=quick_publisher_options(),
    )
    sent: list[Sent] = []

    def produce() -> None:
        # About 500 messages/s: the stream spans the stop and the start.
        sent.extend(
            publish_stream(
                publisher,
                ledger,
                count=MESSAGES,
                size=300,
                tag="restart",
                pause_every=50,
                pause=0.1,
            )
        )

    producer = threading.Thread(target=produce, name="producer")
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        with publisher:
            producer.start()
            wait_for_settled(ledger, MESSAGES // 4)
            started = time.monotonic()
            rabbitmq_node.stop()
            ledger.fault("node stops (rabbitmqctl stop)", 1)
            rabbitmq_node.start()
            ledger.fault("node starts", 1)
            ledger.fault("seconds without a broker", round(time.monotonic() - started))
            producer.join(PATIENCE)
            errors = confirm_all(publisher, ledger, sent)
        settle(ledger)
    stats = publisher.stats()
    assert errors == []
    ledger.fault("producer reconnects", stats.reconnects)
    ledger.fault("consumer reconnects", consumer.stats.reconnects)
    report = ledger.check()
    assert report["quarantined"] == {}
    assert stats.reconnects >= 1
    assert consumer.stats.reconnects >= 1
