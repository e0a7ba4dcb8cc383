"""Producer, consumer and quarantine against RabbitMQ in a container.

The same real clients, emulator and SDKs as the rest of the integration suite; the
broker is the session's RabbitMQ container (see conftest.py), reached through a
published port on 127.0.0.1 — never the machine's broker on 5672.
"""

from __future__ import annotations

import time

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.worker import EncryptedConsumer
from scenario_kit import (
    FAST_RECONNECT,
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    confirm_all,
    ledger_handler,
    publish_stream,
    scenario_clients,
    scenario_publisher,
    scenario_topology,
    settle,
)

from envelope_mq.testing.containers import RabbitContainer
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames
from envelope_mq.testing.probe import amqp_answers

pytestmark = [pytest.mark.container, pytest.mark.integration]


def test_the_container_broker_answers_on_a_loopback_port_of_its_own(
    rabbitmq_container: RabbitContainer,
) -> None:
    assert rabbitmq_container.url.startswith("amqp://emq-test:")
    assert rabbitmq_container.host_port != 5672
    assert amqp_answers("127.0.0.1", rabbitmq_container.host_port)


def test_messages_round_trip_through_a_broker_in_a_container(
    emq_kms: KmsFixture, rabbitmq_container: RabbitContainer, container_names: AmqpNames
) -> None:
    ledger = MessageLedger("round trip through RabbitMQ in a container")
    topology = scenario_topology(container_names.queue, container_names.exchange)
    consumer, publisher = scenario_clients(
        emq_kms, [rabbitmq_container.url], topology, ledger
    )
    with publisher:
        sent = publish_stream(publisher, ledger, count=2_000, size=512, tag="trip")
        assert confirm_all(publisher, ledger, sent) == []
    with ConsumerThread(consumer):
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == 2_000
    assert report["quarantined"] == {}
    assert consumer.stats.handled == 2_000


def test_the_consumer_quarantines_damaged_messages_in_a_container_broker(
    emq_kms: KmsFixture, rabbitmq_container: RabbitContainer, container_names: AmqpNames
) -> None:
    ledger = MessageLedger("quarantine in a container broker")
    topology = scenario_topology(container_names.queue, container_names.exchange)
    urls = [rabbitmq_container.url]
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
    )
    with RawPublisher(emq_kms.settings("producer", urls), topology) as raw:
        for index in range(50):
            message_id = f"good-{index}"
            body = f"good {index}".encode()
            ledger.published(message_id, body)
            raw.send(raw.seal(body, message_id), message_id)
        tampered = raw.seal(b"tampered", "tampered")
        tampered.body = tampered.body[:-1] + bytes([tampered.body[-1] ^ 1])
        ledger.published("tampered", b"tampered", expect="quarantined")
        raw.send(tampered, "tampered")
        stripped = raw.seal(b"stripped", "stripped")
        stripped.headers = {"x-app": "kept"}
        ledger.published("stripped", b"stripped", expect="quarantined")
        raw.send(stripped, "stripped")
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == 50
    assert report["quarantined"] == {"malformed": 1, "undecryptable": 1}


def test_a_kms_outage_holds_messages_in_a_container_broker_and_loses_none(
    emq_kms: KmsFixture, rabbitmq_container: RabbitContainer, container_names: AmqpNames
) -> None:
    ledger = MessageLedger("KMS outage with RabbitMQ in a container")
    topology = scenario_topology(container_names.queue, container_names.exchange)
    urls = [rabbitmq_container.url]
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
        kms_backoff=Backoff(initial=0.2, cap=1.0),
    )
    with scenario_publisher(emq_kms, urls, topology) as publisher:
        sent = publish_stream(publisher, ledger, count=500, size=256, tag="before")
        assert confirm_all(publisher, ledger, sent) == []
        emq_kms.emulator.faults.set(outage_seconds=3600)  # ended by clear() below
        ledger.fault("KMS outage", 1)
        with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
            # The publisher's cached data key carries it through the outage.
            during = publish_stream(
                publisher, ledger, count=500, size=256, tag="during"
            )
            assert confirm_all(publisher, ledger, during) == []
            deadline = time.monotonic() + 30
            while consumer.stats.kms_retries == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            # Held: nothing handled and nothing quarantined while KMS is away.
            assert consumer.stats.kms_retries > 0
            assert consumer.stats.handled == 0
            emq_kms.emulator.faults.clear()
            settle(ledger)
    report = ledger.check()
    assert report["handled"] == 1_000
    assert report["quarantined"] == {}
