"""EnvelopeMiddleware on a real RabbitBroker: FastStream <-> CLI, sync, request/reply.

The real broker, the real KMS emulator and the real Alibaba SDK. The app seals
with the producer's credentials and opens with the consumer's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from command_kit import finish, produce, start_consume
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.transport import (
    QUARANTINE_QUEUE_HEADER,
    QUARANTINE_REASON_HEADER,
)
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms
from faststream.rabbit import (
    ExchangeType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)
from pydantic import BaseModel

from envelope_mq.faststream import EnvelopeMiddleware, guard_connection

pytestmark = pytest.mark.integration

TIMEOUT = 120.0


class Order(BaseModel):
    id: int
    item: str


@pytest.fixture
def envelope(
    emq_producer_settings: Settings, emq_consumer_settings: Settings
) -> Iterator[EnvelopeMiddleware]:
    sealing = AliyunKms.from_settings(emq_producer_settings)
    opening = AliyunKms.from_settings(emq_consumer_settings)
    assert emq_producer_settings.kms_key_id is not None
    middleware = EnvelopeMiddleware(
        emq_producer_settings.kms_key_id,
        data_keys=DataKeyCache(sealing),
        unwrap=UnwrapCache(opening),
    )
    yield middleware
    middleware.close()
    sealing.close()
    opening.close()


def _broker(settings: Settings, envelope: EnvelopeMiddleware) -> RabbitBroker:
    return _broker_at(settings.rabbitmq_urls[0], [envelope])


def _broker_at(url: str, middlewares: list[EnvelopeMiddleware]) -> RabbitBroker:
    # The documented way: guarded against content headers pamqp cannot decode.
    return guard_connection(RabbitBroker(url, middlewares=middlewares))


def _declare(settings: Settings, topology: Topology) -> None:
    connection = connect_blocking(settings.rabbitmq_urls)
    try:
        topology.declare(connection.channel())
    finally:
        connection.close()


def _queue(topology: Topology) -> RabbitQueue:
    # The same queue the sync side declares (arguments included).
    return RabbitQueue(
        topology.queue,
        durable=True,
        arguments=dict(topology.queue_arguments),
        routing_key=topology.binding_key,
    )


def _exchange(topology: Topology) -> RabbitExchange:
    return RabbitExchange(
        topology.exchange,
        type=ExchangeType.TOPIC,
        durable=True,
        auto_delete=topology.exchange_auto_delete,
    )


def test_cli_produce_reaches_a_faststream_handler_as_plaintext(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
    envelope: EnvelopeMiddleware,
) -> None:
    # What the commands declare (no test arguments: emq_amqp_names cleans up).
    topology = Topology(queue=emq_amqp_names.queue, exchange=emq_amqp_names.exchange)
    _declare(emq_consumer_settings, topology)
    lines = [f"line {i} ünïcode" for i in range(20)]
    produce(
        emq_producer_settings, emq_amqp_names, lines, "--content-type", "text/plain"
    )

    async def run() -> list[str]:
        broker = _broker_at(emq_consumer_settings.rabbitmq_urls[0], [envelope])
        got: list[str] = []
        done = asyncio.Event()

        @broker.subscriber(_queue(topology), _exchange(topology))
        async def handle(text: str) -> None:
            got.append(text)
            if len(got) == len(lines):
                done.set()

        async with broker:
            await broker.start()
            await asyncio.wait_for(done.wait(), TIMEOUT)
        return got

    assert sorted(asyncio.run(run())) == sorted(lines)


def test_faststream_publish_comes_out_of_cli_consume(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
    envelope: EnvelopeMiddleware,
) -> None:
    # What the commands declare (no test arguments: emq_amqp_names cleans up).
    topology = Topology(queue=emq_amqp_names.queue, exchange=emq_amqp_names.exchange)
    _declare(emq_consumer_settings, topology)
    consumer = start_consume(emq_consumer_settings, emq_amqp_names, "--count", "3")

    async def run() -> None:
        broker = _broker_at(emq_producer_settings.rabbitmq_urls[0], [envelope])
        async with broker:
            await broker.start()
            for i in range(3):
                await broker.publish(
                    Order(id=i, item="tea"),
                    exchange=_exchange(topology),
                    routing_key=topology.binding_key,
                    persist=True,
                )

    try:
        asyncio.run(run())
        code, out, err = finish(consumer)
    finally:
        consumer.kill()
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(json.loads(r["body"])["id"] for r in records) == [0, 1, 2]
    assert {r["content_type"] for r in records} == {"application/json"}


def test_request_reply_is_sealed_on_the_wire_both_ways(
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    envelope: EnvelopeMiddleware,
) -> None:
    _declare(emq_consumer_settings, emq_amqp_topology)

    async def run() -> tuple[Any, dict[str, Any], bytes]:
        broker = _broker_at(emq_consumer_settings.rabbitmq_urls[0], [envelope])

        @broker.subscriber(_queue(emq_amqp_topology), _exchange(emq_amqp_topology))
        async def price(order: Order) -> dict[str, Any]:
            return {"id": order.id, "price": 12}

        async with broker:
            await broker.start()
            response = await broker.request(
                Order(id=5, item="tea"),
                exchange=_exchange(emq_amqp_topology),
                routing_key=emq_amqp_topology.binding_key,
                timeout=TIMEOUT,
            )
            raw = response.raw_message
            return await response.decode(), dict(raw.headers), raw.body

    decoded, headers, wire_body = asyncio.run(run())
    assert decoded == {"id": 5, "price": 12}
    assert wire.our_headers(headers) == {"x-emq"}  # the reply was sealed (v2)
    assert b"price" not in wire_body


def test_sync_publisher_to_faststream_with_a_context_policy_quarantines_others(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    good = {"tenant": "a"}
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology, context={"tenant": "b"}
    ) as publisher:
        publisher.send(b"not for this app", content_type="text/plain")
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology, context=good
    ) as publisher:
        publisher.send(b"for this app", content_type="text/plain")

    opening = EnvelopeMiddleware.from_settings(
        emq_consumer_settings, policy=ContextPolicy.parse(["tenant=a"])
    )

    async def run() -> list[str]:
        broker = _broker_at(emq_consumer_settings.rabbitmq_urls[0], [opening])
        got: list[str] = []
        done = asyncio.Event()

        @broker.subscriber(_queue(emq_amqp_topology), _exchange(emq_amqp_topology))
        async def handle(text: str) -> None:
            got.append(text)
            done.set()

        async with broker:
            await broker.start()
            await asyncio.wait_for(done.wait(), TIMEOUT)
        return got

    try:
        assert asyncio.run(run()) == ["for this app"]
    finally:
        opening.close()
    headers = _drain(emq_consumer_settings, emq_amqp_topology.quarantine_queue)
    assert [h[QUARANTINE_REASON_HEADER] for h in headers] == ["context-denied"]
    assert headers[0][QUARANTINE_QUEUE_HEADER] == emq_amqp_topology.queue


def _drain(settings: Settings, queue: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        connection = await aio_pika.connect(settings.rabbitmq_urls[0])
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, passive=True)
            while (message := await q.get(fail=False)) is not None:
                found.append(dict(message.headers))
                await message.ack()
        return found

    return asyncio.run(run())


def test_a_faststream_service_kms_refuses_quarantines_nothing(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology
    ) as publisher:
        publisher.send(b"stays queued", content_type="text/plain")
    wrong = dataclasses.replace(emq_consumer_settings, access_key_secret="wrong")
    opening = EnvelopeMiddleware.from_settings(wrong)
    halted = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "consumer_halted":
                halted.set()

    watch = Watch()
    logging.getLogger("envelope_mq.faststream").addHandler(watch)

    async def run() -> list[str]:
        broker = _broker_at(wrong.rabbitmq_urls[0], [opening])
        got: list[str] = []

        @broker.subscriber(_queue(emq_amqp_topology), _exchange(emq_amqp_topology))
        async def handle(text: str) -> None:
            got.append(text)

        async with broker:
            await broker.start()
            await asyncio.wait_for(asyncio.to_thread(halted.wait, TIMEOUT), TIMEOUT)
        return got

    try:
        assert asyncio.run(run()) == []
    finally:
        logging.getLogger("envelope_mq.faststream").removeHandler(watch)
        opening.close()
    assert _drain(emq_consumer_settings, emq_amqp_topology.quarantine_queue) == []
    assert len(_drain(emq_consumer_settings, emq_amqp_topology.queue)) == 1
