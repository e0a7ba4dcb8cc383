"""Wire formats v1 and v2 side by side on the real broker and the real emulator.

A v1 producer (EMQ_WIRE_VERSION=1, ``produce --wire-version 1``) and a v2 one
write into one queue; the sync and the asyncio consumers open both, and what
is on the wire is what each version says (docs/wire-format.md §3, §11).
Mix-ups made on the wire (v1 and v2 headers on one message, a v2 body under v1
headers) are quarantined with the reason §7.2 gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import subprocess
import sys
import time
import uuid

import pika
import pytest
from command_kit import env_for
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.transport import QUARANTINE_REASON_HEADER
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire, wire_v2
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import AliyunKms
from scenario_kit import run_at_most

from envelope_mq.aio import AsyncEncryptedConsumer, AsyncEncryptedPublisher
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.integration

TIMEOUT = 120.0
CONTEXT = {"tenant": "a"}


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _with(settings: Settings, version: int) -> Settings:
    return dataclasses.replace(settings, wire_version=version)


def _publish(settings: Settings, topology: Topology, version: int, n: int) -> dict:
    bodies = {str(uuid.uuid4()): f"v{version} #{i}".encode() * i for i in range(n)}
    with EncryptedPublisher.from_settings(
        _with(settings, version), topology, context=CONTEXT
    ) as publisher:
        futures = [
            publisher.publish(body, message_id=message_id)
            for message_id, body in bodies.items()
        ]
        assert [f.result(TIMEOUT) for f in futures] == list(bodies)
    return bodies


async def _publish_async(
    settings: Settings, topology: Topology, version: int, n: int
) -> dict:
    bodies = {str(uuid.uuid4()): f"aio v{version} #{i}".encode() for i in range(n)}
    async with AsyncEncryptedPublisher.from_settings(
        _with(settings, version), topology=topology, context=CONTEXT
    ) as publisher:
        futures = [
            await publisher.publish(body, message_id=message_id)
            for message_id, body in bodies.items()
        ]
        assert await asyncio.gather(*futures) == list(bodies)
    return bodies


def _peek_headers(url: str, queue: str) -> list[dict]:
    """Every message's headers, read with pika and put back (requeued)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        seen = []
        while True:
            method, properties, _body = channel.basic_get(queue)
            if method is None:
                break
            seen.append(dict(properties.headers or {}))
        channel.basic_recover(requeue=True)
        return seen
    finally:
        connection.close()


def _consume_sync(
    settings: Settings, topology: Topology, count: int
) -> tuple[dict[str, bytes], EncryptedConsumer]:
    received: dict[str, bytes] = {}

    def handler(message: ReceivedMessage) -> None:
        assert message.context == CONTEXT
        received[message.message_id] = _digest(message.body)

    consumer = EncryptedConsumer.from_settings(settings, topology, handler)
    run_at_most(consumer, count, TIMEOUT)
    return received, consumer


async def _consume_async(
    settings: Settings, topology: Topology, count: int
) -> tuple[dict[str, bytes], AsyncEncryptedConsumer]:
    received: dict[str, bytes] = {}

    async def handler(message: ReceivedMessage) -> None:
        assert message.context == CONTEXT
        received[message.message_id] = _digest(message.body)

    consumer = AsyncEncryptedConsumer.from_settings(settings, topology)
    async with consumer, asyncio.timeout(TIMEOUT):
        await consumer.run(handler, count=count)
    return received, consumer


def _both_versions_on_the_wire(url: str, queue: str, v1: int, v2: int) -> None:
    headers = _peek_headers(url, queue)
    kinds = [
        2 if wire_v2.HEADER in h else 1 if wire.VERSION_HEADER in h else 0
        for h in headers
    ]
    assert sorted(kinds) == [1] * v1 + [2] * v2
    for h in headers:
        assert wire.our_headers(h) in ({wire_v2.HEADER}, set(wire.HEADER_NAMES))
        if wire_v2.HEADER in h:
            assert type(h[wire_v2.HEADER]) is bytes  # AMQP "x", as pika reads it


def test_v1_and_v2_producers_into_one_queue_the_sync_consumer_opens_both(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    bodies = _publish(emq_producer_settings, emq_amqp_topology, 1, 40)
    bodies |= _publish(emq_producer_settings, emq_amqp_topology, 2, 40)
    _both_versions_on_the_wire(emq_rabbitmq_url, emq_amqp_topology.queue, 40, 40)

    received, consumer = _consume_sync(emq_consumer_settings, emq_amqp_topology, 80)

    assert received == {k: _digest(v) for k, v in bodies.items()}
    assert not consumer.stats.quarantined


def test_v1_and_v2_producers_into_one_queue_the_asyncio_consumer_opens_both(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    bodies = asyncio.run(
        _publish_async(emq_producer_settings, emq_amqp_topology, 1, 30)
    )
    bodies |= _publish(emq_producer_settings, emq_amqp_topology, 2, 30)
    bodies |= asyncio.run(
        _publish_async(emq_producer_settings, emq_amqp_topology, 2, 30)
    )
    _both_versions_on_the_wire(emq_rabbitmq_url, emq_amqp_topology.queue, 30, 60)

    received, consumer = asyncio.run(
        _consume_async(emq_consumer_settings, emq_amqp_topology, 90)
    )

    assert received == {k: _digest(v) for k, v in bodies.items()}
    assert not consumer.stats.quarantined


def test_produce_wire_version_1_is_opened_by_the_consumer(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: AmqpNames,
    emq_rabbitmq_url: str,
) -> None:
    env = env_for(emq_producer_settings)
    # What produce declares (the names fixture deletes it afterwards).
    topology = Topology(queue=emq_amqp_names.queue, exchange=emq_amqp_names.exchange)
    for argv, version in ((["--wire-version", "1"], 1), ([], 2)):
        done = subprocess.run(
            [sys.executable, "-m", "envelope_mq", "produce", *argv,
             "--queue", topology.queue, "--exchange", topology.exchange,
             "--context", "tenant=a", f"from produce v{version}"],
            env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    _both_versions_on_the_wire(emq_rabbitmq_url, topology.queue, 1, 1)
    received, consumer = _consume_sync(emq_consumer_settings, topology, 2)
    assert sorted(received.values()) == sorted(
        _digest(f"from produce v{v}".encode()) for v in (1, 2)
    )
    assert not consumer.stats.quarantined


def test_mix_ups_on_the_wire_are_quarantined_with_their_reasons(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    """One message sealed as v1 and as v2 under the same data key, properties
    and plaintext: both headers on one message is malformed (before KMS); a v2
    body under the v1 headers, and back, fails the tag (undecryptable)."""
    topology = emq_amqp_topology
    with AliyunKms.from_settings(emq_producer_settings) as kms:
        cache = DataKeyCache(kms)
        key_id = emq_producer_settings.kms_key_id or ""
        meta = MessageMeta("mix-1", int(time.time()), "text/plain")
        v1, v2 = (
            Sealer(cache, key_id, CONTEXT, wire_version=v).seal(b"mixed up", meta)
            for v in (1, 2)
        )
    assert v1.body != v2.body
    cases = [
        ("mixed", v1.headers | v2.headers, v2.body, "malformed"),
        ("v2 body, v1 headers", v1.headers, v2.body, "undecryptable"),
        ("v1 body, v2 headers", v2.headers, v1.body, "undecryptable"),
        ("good", v2.headers, v2.body, None),
    ]
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_url))
    try:
        channel = connection.channel()
        topology.declare(channel)
        for name, headers, body, _ in cases:
            channel.basic_publish(
                topology.exchange,
                topology.binding_key,
                body,
                pika.BasicProperties(
                    headers={**headers, "x-case": name},
                    message_id=meta.message_id,
                    timestamp=meta.timestamp,
                    content_type=meta.content_type,
                    delivery_mode=2,
                ),
            )
    finally:
        connection.close()

    received, consumer = _consume_sync(emq_consumer_settings, topology, 1)

    assert list(received.values()) == [_digest(b"mixed up")]
    assert consumer.stats.quarantined == {"malformed": 1, "undecryptable": 2}
    quarantined = _peek_headers(emq_rabbitmq_url, topology.quarantine_queue)
    assert {h["x-case"]: h[QUARANTINE_REASON_HEADER] for h in quarantined} == {
        name: reason for name, _, _, reason in cases if reason
    }
