"""The asyncio publisher and consumer: interop with the sync side, quarantine, stop.

The real broker, the real KMS emulator and the real Alibaba SDK; each test runs
its own event loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid

import aio_pika
import pytest
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.transport import (
    QUARANTINE_QUEUE_HEADER,
    QUARANTINE_REASON_HEADER,
)
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsCallerError
from scenario_kit import run_at_most

from envelope_mq.aio import AsyncEncryptedConsumer, AsyncEncryptedPublisher

pytestmark = pytest.mark.integration

TIMEOUT = 120.0


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _bodies(count: int) -> dict[str, bytes]:
    # Sizes from 0 bytes up, and non-UTF-8 bytes too.
    return {str(uuid.uuid4()): bytes([i % 256]) * (i % 1500) for i in range(count)}


async def _publish_async(
    settings: Settings,
    topology: Topology,
    bodies: dict[str, bytes],
    context: dict[str, str] | None = None,
) -> AsyncEncryptedPublisher:
    async with AsyncEncryptedPublisher.from_settings(
        settings, topology=topology, context=context or {"tenant": "a"}
    ) as publisher:
        # Pipelined: every message is handed over before any confirm is awaited.
        futures = [
            await publisher.publish(body, message_id=message_id, content_type="x/y")
            for message_id, body in bodies.items()
        ]
        assert await asyncio.gather(*futures) == list(bodies)
    return publisher


async def _consume_async(
    settings: Settings, topology: Topology, count: int, **options: object
) -> tuple[dict[str, bytes], AsyncEncryptedConsumer]:
    received: dict[str, bytes] = {}

    async def handler(message: ReceivedMessage) -> None:
        received[message.message_id] = _digest(message.body)
        assert message.context == {"tenant": "a"}

    consumer = AsyncEncryptedConsumer.from_settings(settings, topology, **options)
    async with consumer:
        async with asyncio.timeout(TIMEOUT):
            await consumer.run(handler, count=count)
    return received, consumer


def _consume_sync(
    settings: Settings, topology: Topology, count: int
) -> tuple[dict[str, bytes], EncryptedConsumer]:
    received: dict[str, bytes] = {}

    def handler(message: ReceivedMessage) -> None:
        received[message.message_id] = _digest(message.body)

    consumer = EncryptedConsumer.from_settings(settings, topology, handler)
    run_at_most(consumer, count, TIMEOUT)
    return received, consumer


def test_async_publisher_to_sync_consumer_delivers_every_message(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    bodies = _bodies(300)
    publisher = asyncio.run(
        _publish_async(emq_producer_settings, emq_amqp_topology, bodies)
    )
    assert publisher.stats().confirmed == 300

    received, consumer = _consume_sync(emq_consumer_settings, emq_amqp_topology, 300)

    assert received == {k: _digest(v) for k, v in bodies.items()}
    assert not consumer.stats.quarantined


def test_sync_publisher_to_async_consumer_delivers_every_message(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    bodies = _bodies(300)
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology, context={"tenant": "a"}
    ) as publisher:
        for message_id, body in bodies.items():
            publisher.publish(body, message_id=message_id, content_type="x/y")
        assert publisher.flush(timeout=TIMEOUT)

    received, consumer = asyncio.run(
        _consume_async(emq_consumer_settings, emq_amqp_topology, 300)
    )

    assert received == {k: _digest(v) for k, v in bodies.items()}
    assert consumer.stats.handled == 300
    assert not consumer.stats.quarantined


def test_async_iteration_yields_every_message_and_acknowledges_them(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    bodies = _bodies(50)
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, bodies))

    async def iterate() -> dict[str, bytes]:
        received: dict[str, bytes] = {}
        async with AsyncEncryptedConsumer.from_settings(
            emq_consumer_settings, emq_amqp_topology
        ) as consumer:
            async with asyncio.timeout(TIMEOUT):
                async for message in consumer:
                    received[message.message_id] = _digest(message.body)
                    if len(received) == len(bodies):
                        consumer.stop()
        return received

    assert asyncio.run(iterate()) == {k: _digest(v) for k, v in bodies.items()}
    # Every one was acknowledged: nothing is left for a second consumer.
    assert _queue_depth(emq_consumer_settings, emq_amqp_topology.queue) == 0


def test_leaving_the_loop_requeues_the_message_in_hand(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    bodies = _bodies(5)
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, bodies))

    async def take_two() -> list[str]:
        seen: list[str] = []
        async with AsyncEncryptedConsumer.from_settings(
            emq_consumer_settings, emq_amqp_topology, prefetch=10
        ) as consumer:
            async for message in consumer:
                seen.append(message.message_id)
                if len(seen) == 2:
                    break
        return seen

    seen = asyncio.run(take_two())
    # The first was acknowledged, the second (in hand at the break) was not.
    assert _queue_depth(emq_consumer_settings, emq_amqp_topology.queue) == 4
    received, _ = asyncio.run(
        _consume_async(emq_consumer_settings, emq_amqp_topology, 4)
    )
    assert seen[1] in received
    assert seen[0] not in received


def test_tampered_and_denied_messages_go_to_quarantine_with_the_sync_reasons(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    good = _bodies(3)
    # The bad ones first: the consumer stops after the third good one.
    asyncio.run(
        _publish_async(
            emq_producer_settings,
            emq_amqp_topology,
            _bodies(1),
            context={"tenant": "b"},
        )
    )
    _publish_tampered(emq_producer_settings, emq_amqp_topology)
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, good))

    received, consumer = asyncio.run(
        _consume_async(
            emq_consumer_settings,
            emq_amqp_topology,
            3,
            policy=ContextPolicy.parse(["tenant=a"]),
        )
    )

    assert received == {k: _digest(v) for k, v in good.items()}
    assert consumer.stats.quarantined == {"context-denied": 1, "undecryptable": 1}
    quarantined = _drain(emq_consumer_settings, emq_amqp_topology.quarantine_queue)
    assert sorted(h[QUARANTINE_REASON_HEADER] for h in quarantined) == [
        "context-denied",
        "undecryptable",
    ]
    assert {h[QUARANTINE_QUEUE_HEADER] for h in quarantined} == {
        emq_amqp_topology.queue
    }


def test_a_failing_handler_is_retried_then_quarantined(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, _bodies(1)))
    calls = 0

    async def run() -> AsyncEncryptedConsumer:
        async def handler(message: ReceivedMessage) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                consumer.stop()
            raise ValueError("no")

        consumer = AsyncEncryptedConsumer.from_settings(
            emq_consumer_settings, emq_amqp_topology, max_deliveries=3
        )
        async with consumer:
            async with asyncio.timeout(TIMEOUT):
                await consumer.run(handler)
        return consumer

    consumer = asyncio.run(run())
    assert calls == 3
    assert consumer.stats.requeued == 2
    assert consumer.stats.quarantined == {"handler-error": 1}


def test_cancelling_run_requeues_the_message_in_hand(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, _bodies(3)))

    async def run() -> None:
        started = asyncio.Event()

        async def handler(message: ReceivedMessage) -> None:
            started.set()
            await asyncio.sleep(3600)

        async with AsyncEncryptedConsumer.from_settings(
            emq_consumer_settings, emq_amqp_topology
        ) as consumer:
            task = asyncio.create_task(consumer.run(handler))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert _queue_depth(emq_consumer_settings, emq_amqp_topology.queue) == 3


def _publish_tampered(settings: Settings, topology: Topology) -> None:
    """One message sealed right, then changed in one byte of its body."""

    async def run() -> None:
        async with AsyncEncryptedPublisher.from_settings(
            settings, topology=topology, context={"tenant": "a"}
        ) as publisher:
            # Sealed by the library; re-published damaged, by hand.
            from envelope_mq.shared.envelope import MessageMeta

            from envelope_mq.aio.broker import outgoing_message

            meta = MessageMeta(str(uuid.uuid4()), int(time.time()))
            sealed = await publisher._default_sealer.seal(b"secret", meta)
            message = outgoing_message(sealed)
            message.body = bytes([message.body[0] ^ 1]) + message.body[1:]
            connection = await aio_pika.connect(settings.rabbitmq_urls[0])
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(topology.exchange)
                await exchange.publish(message, topology.binding_key)

    asyncio.run(run())


def _queue_depth(settings: Settings, queue: str) -> int:
    async def run() -> int:
        connection = await aio_pika.connect(settings.rabbitmq_urls[0])
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

    # The broker settles acks asynchronously: let the count catch up.
    deadline = time.monotonic() + 10
    depth = asyncio.run(run())
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = asyncio.run(run())
        if again == depth:
            break
        depth = again
    return depth


def _drain(settings: Settings, queue: str) -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        headers: list[dict[str, object]] = []
        connection = await aio_pika.connect(settings.rabbitmq_urls[0])
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, passive=True)
            while (message := await q.get(fail=False)) is not None:
                headers.append(dict(message.headers))
                await message.ack()
        return headers

    return asyncio.run(run())


class _KeyIdsAsThemselves:
    """A resolver for rules written as KeyIds (the consumer may not DescribeKey)."""

    def describe_key_id(self, key: str) -> str:
        return key


def test_the_allowed_key_policy_applies_to_the_asyncio_consumer(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    # tenant=a messages, under a key that may only speak for tenant=b.
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, _bodies(2)))
    key = emq_producer_settings.kms_key_id
    assert key is not None

    async def run() -> AsyncEncryptedConsumer:
        consumer = AsyncEncryptedConsumer.from_settings(
            emq_consumer_settings,
            emq_amqp_topology,
            key_policy=KeyPolicy.parse([f"{key}@tenant=b"]).resolve(
                _KeyIdsAsThemselves()
            ),
        )
        async with consumer:
            running = asyncio.create_task(consumer.run(lambda message: None))
            async with asyncio.timeout(TIMEOUT):
                while sum(consumer.stats.quarantined.values()) < 2:
                    await asyncio.sleep(0.05)
            consumer.stop()
            await running
        return consumer

    consumer = asyncio.run(run())
    assert consumer.stats.quarantined == {"context-denied": 2}
    assert consumer.stats.handled == 0


def test_an_async_consumer_kms_refuses_stops_and_leaves_every_message_queued(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    bodies = _bodies(5)
    asyncio.run(_publish_async(emq_producer_settings, emq_amqp_topology, bodies))
    wrong = dataclasses.replace(emq_consumer_settings, access_key_secret="wrong")
    with pytest.raises(KmsCallerError) as halted:
        asyncio.run(_consume_async(wrong, emq_amqp_topology, 5))
    assert halted.value.code == "InvalidAccessKeySecret"
    assert _queue_depth(emq_consumer_settings, emq_amqp_topology.queue) == 5
    assert _queue_depth(emq_consumer_settings, emq_amqp_topology.quarantine_queue) == 0
