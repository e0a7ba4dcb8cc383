"""Producer to consumer, through the real broker, the real emulator and the real SDK."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from scenario_kit import run_at_most

from envelope_mq.testing.kms import KmsFixture, Role

pytestmark = pytest.mark.integration


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _round_trip(
    producer_settings: Settings,
    consumer_settings: Settings,
    topology: Topology,
    count: int,
) -> tuple[dict[str, bytes], dict[str, bytes], EncryptedConsumer]:
    sent: dict[str, bytes] = {}
    with EncryptedPublisher.from_settings(
        producer_settings, topology=topology, context={"tenant": "a"}
    ) as publisher:
        futures = []
        for i in range(count):
            # Sizes from 0 bytes up, and non-UTF-8 bytes too
            body = bytes([i % 256]) * (i % 1500)
            message_id = str(uuid.uuid4())
            sent[message_id] = _digest(body)
            futures.append(publisher.publish(body, message_id=message_id))
        assert publisher.flush(timeout=120)
        assert all(f.result() for f in futures)

    received: dict[str, bytes] = {}
    contexts: set[tuple[tuple[str, str], ...]] = set()

    def handler(message: ReceivedMessage) -> None:
        received[message.message_id] = _digest(message.body)
        contexts.add(tuple(sorted(message.context.items())))

    consumer = EncryptedConsumer.from_settings(consumer_settings, topology, handler)
    run_at_most(consumer, count, 120)
    assert contexts == {(("tenant", "a"),)}
    return sent, received, consumer


@pytest.mark.slow
def test_ten_thousand_messages_arrive_intact(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_kms: KmsFixture,
) -> None:
    sent, received, consumer = _round_trip(
        emq_producer_settings, emq_consumer_settings, emq_amqp_topology, 10_000
    )

    assert received == sent
    assert consumer.stats.handled == 10_000
    assert not consumer.stats.quarantined
    # one data key for the whole run: one GenerateDataKey, one Decrypt
    assert emq_kms.emulator.request_count.get("GenerateDataKey") == 1
    assert emq_kms.emulator.request_count.get("Decrypt") == 1


def test_quorum_queue_round_trip(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    quorum = Topology(
        queue=emq_amqp_topology.queue,
        exchange=emq_amqp_topology.exchange,
        queue_type="quorum",
        queue_arguments=emq_amqp_topology.queue_arguments,
        exchange_auto_delete=True,
    )
    sent, received, consumer = _round_trip(
        emq_producer_settings, emq_consumer_settings, quorum, 500
    )

    assert received == sent
    assert not consumer.stats.quarantined


def test_round_trip_over_verified_tls_to_kms(
    emq_kms_tls: KmsFixture,
    emq_rabbitmq_urls: tuple[str, ...],
    emq_amqp_topology: Topology,
) -> None:
    producer = emq_kms_tls.settings("producer", emq_rabbitmq_urls)
    consumer_settings = emq_kms_tls.settings("consumer", emq_rabbitmq_urls)
    assert producer.kms_endpoint is not None
    assert producer.kms_endpoint.startswith("https://")
    assert producer.kms_ca_file is not None

    sent, received, consumer = _round_trip(
        producer, consumer_settings, emq_amqp_topology, 50
    )

    assert received == sent
    assert not consumer.stats.quarantined
    answered = emq_kms_tls.emulator.request_count
    assert answered.get("GenerateDataKey") == 1
    assert answered.get("Decrypt") == 1


def test_round_trip_through_a_dedicated_gateway_over_verified_tls(
    emq_kms_tls: KmsFixture,
    emq_rabbitmq_urls: tuple[str, ...],
    emq_amqp_topology: Topology,
) -> None:
    # KMS_INSTANCE_ENDPOINT: both sides use DedicatedKms (alibabacloud-kms20160120).
    def dedicated(role: Role) -> Settings:
        settings = emq_kms_tls.settings(role, emq_rabbitmq_urls)
        return dataclasses.replace(
            settings, kms_endpoint=None, kms_instance_endpoint=settings.kms_endpoint
        )

    sent, received, consumer = _round_trip(
        dedicated("producer"), dedicated("consumer"), emq_amqp_topology, 50
    )

    assert received == sent
    assert not consumer.stats.quarantined
    answered = emq_kms_tls.emulator.request_count
    assert (answered.get("GenerateDataKey"), answered.get("Decrypt")) == (1, 1)
