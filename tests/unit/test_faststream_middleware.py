"""EnvelopeMiddleware under FastStream's TestRabbitBroker, with InMemoryKeyProvider.

A spy middleware placed after EnvelopeMiddleware sees what goes on the wire
(publish) and what the handler gets (consume), so each test checks both ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.transport import (
    QUARANTINE_QUEUE_HEADER,
    QUARANTINE_REASON_HEADER,
)
from envelope_mq.shared import wire_v2
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.kms import InMemoryKeyProvider
from faststream import BaseMiddleware
from faststream.rabbit import RabbitBroker, RabbitRouter, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import BaseModel
from yarl import URL

from envelope_mq.aio.frames import (
    SafeHeaderRobustConnection,
    SafeHeaderTransportFactory,
)
from envelope_mq.faststream import EnvelopeMiddleware, guard_connection

KEY = "key-faststream"


class Order(BaseModel):
    id: int
    item: str


class _Wire:
    """What the spy saw: sealed commands on their way out."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, Any]] = []

    def __call__(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        seen = self

        class Spy(BaseMiddleware):
            async def publish_scope(
                self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any
            ) -> Any:
                seen.bodies.append(cmd.body)
                seen.headers.append(dict(cmd.headers))
                return await call_next(cmd)

        return Spy(msg, context=context)


def _broker(envelope: EnvelopeMiddleware, spy: _Wire | None = None) -> RabbitBroker:
    middlewares: list[Any] = [envelope] if spy is None else [envelope, spy]
    return RabbitBroker("amqp://guest:guest@localhost:5672/", middlewares=middlewares)


def test_handlers_get_typed_plaintext_and_the_wire_carries_only_ciphertext() -> None:
    provider = InMemoryKeyProvider([KEY])
    spy = _Wire()
    broker = _broker(EnvelopeMiddleware.from_provider(provider, KEY), spy)
    got: list[Order] = []

    @broker.subscriber("orders")
    async def handle(order: Order) -> None:
        got.append(order)

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await broker.publish(Order(id=7, item="tea leaves"), "orders")

    asyncio.run(run())
    assert got == [Order(id=7, item="tea leaves")]
    assert b"tea leaves" not in spy.bodies[0]
    assert wire_v2.decode(spy.headers[0][wire_v2.HEADER]).copies[0].key_id == KEY


def test_a_publisher_decorator_and_request_reply_are_sealed_both_ways() -> None:
    provider = InMemoryKeyProvider([KEY])
    spy = _Wire()
    broker = _broker(EnvelopeMiddleware.from_provider(provider, KEY), spy)
    forwarded: list[str] = []

    @broker.subscriber("in")
    @broker.publisher("out")
    async def shout(text: str) -> str:
        return text.upper()

    @broker.subscriber("out")
    async def collect(text: str) -> None:
        forwarded.append(text)

    @broker.subscriber("rpc")
    async def echo(data: dict[str, int]) -> dict[str, int]:
        return {"n": data["n"] + 1}

    async def run() -> Any:
        async with TestRabbitBroker(broker):
            await broker.publish("quiet words", "in")
            response = await broker.request({"n": 41}, "rpc")
            return await response.decode()

    assert asyncio.run(run()) == {"n": 42}
    assert forwarded == ["QUIET WORDS"]
    # in, out (the decorator) and rpc (the request): all sealed. (The reply
    # is sealed too on a real broker; TestRabbitBroker hands it back directly:
    # tests/integration/test_faststream.py checks it on the wire.)
    assert len(spy.bodies) == 3
    assert all(
        wire_v2.decode(h[wire_v2.HEADER]).copies[0].key_id == KEY for h in spy.headers
    )
    assert not any(b"QUIET" in b or b"quiet" in b for b in spy.bodies)


def test_a_message_sealed_under_another_key_goes_to_quarantine_not_the_handler() -> (
    None
):
    # Two apps whose KMS keys differ: the receiver's KMS refuses the data key.
    sender = EnvelopeMiddleware.from_provider(InMemoryKeyProvider([KEY]), KEY)
    receiver = EnvelopeMiddleware.from_provider(InMemoryKeyProvider([KEY]))
    broker = RabbitBroker()
    # Two apps in one test broker: each router carries its own middleware.
    sending, receiving = (
        RabbitRouter(middlewares=[sender]),
        RabbitRouter(middlewares=[receiver]),
    )
    outbox = sending.publisher("jobs")
    handled: list[str] = []
    quarantined: list[dict[str, Any]] = []

    @receiving.subscriber("jobs")
    async def handle(text: str) -> None:
        handled.append(text)

    @receiving.subscriber("jobs.quarantine")
    async def watch(body: bytes, message: RabbitMessage) -> None:
        quarantined.append(dict(message.headers))
        assert b"secret job" not in body  # stored as it came: sealed

    broker.include_routers(sending, receiving)

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await outbox.publish("secret job")

    asyncio.run(run())
    assert handled == []
    assert [h[QUARANTINE_REASON_HEADER] for h in quarantined] == ["kms-rejected"]
    assert quarantined[0][QUARANTINE_QUEUE_HEADER] == "jobs"


def test_the_allowed_context_policy_quarantines_other_tenants() -> None:
    provider = InMemoryKeyProvider([KEY])
    sender = EnvelopeMiddleware.from_provider(provider, KEY, context={"tenant": "b"})
    receiver = EnvelopeMiddleware.from_provider(
        provider, policy=ContextPolicy.parse(["tenant=a"])
    )
    broker = RabbitBroker()
    # Two apps in one test broker: each router carries its own middleware.
    sending, receiving = (
        RabbitRouter(middlewares=[sender]),
        RabbitRouter(middlewares=[receiver]),
    )
    outbox = sending.publisher("jobs")
    handled: list[str] = []
    reasons: list[str] = []

    @receiving.subscriber("jobs")
    async def handle(text: str) -> None:
        handled.append(text)

    @receiving.subscriber("jobs.quarantine")
    async def watch(body: bytes, message: RabbitMessage) -> None:
        reasons.append(message.headers[QUARANTINE_REASON_HEADER])

    broker.include_routers(sending, receiving)

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await outbox.publish("for tenant b")

    asyncio.run(run())
    assert handled == []
    assert reasons == ["context-denied"]


def test_without_a_master_key_nothing_is_published() -> None:
    broker = _broker(EnvelopeMiddleware.from_provider(InMemoryKeyProvider([KEY])))

    @broker.subscriber("orders")
    async def handle(text: str) -> None:
        raise AssertionError("never delivered")

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await broker.publish("plaintext", "orders")

    with pytest.raises(ConfigError):
        asyncio.run(run())


def test_the_allowed_key_policy_quarantines_other_senders() -> None:
    provider = InMemoryKeyProvider([KEY, "key-other"])
    allowed = EnvelopeMiddleware.from_provider(provider, KEY)
    other = EnvelopeMiddleware.from_provider(provider, "key-other")
    receiver = EnvelopeMiddleware.from_provider(
        provider, key_policy=KeyPolicy.parse([KEY])
    )
    broker = RabbitBroker()
    trusted, stranger = (
        RabbitRouter(middlewares=[allowed]),
        RabbitRouter(middlewares=[other]),
    )
    receiving = RabbitRouter(middlewares=[receiver])
    handled: list[str] = []
    reasons: list[str] = []

    @receiving.subscriber("jobs")
    async def handle(text: str) -> None:
        handled.append(text)

    @receiving.subscriber("jobs.quarantine")
    async def watch(body: bytes, message: RabbitMessage) -> None:
        reasons.append(message.headers[QUARANTINE_REASON_HEADER])

    broker.include_routers(trusted, stranger, receiving)

    async def run() -> None:
        async with TestRabbitBroker(broker):
            await trusted.publisher("jobs").publish("from the trusted key")
            await stranger.publisher("jobs").publish("from another key")

    asyncio.run(run())
    assert handled == ["from the trusted key"]
    assert reasons == ["key-denied"]


def test_guard_connection_gives_connect_robust_the_sanitizing_connection() -> None:
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/")
    assert guard_connection(broker) is broker
    # what FastStream 0.7 hands aio_pika.connect_robust
    assert broker._connection_kwargs["connection_class"] is SafeHeaderRobustConnection


def test_guard_connection_refuses_a_connected_broker() -> None:
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/")
    broker._connection = object()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="before the broker connects"):
        guard_connection(broker)


def test_the_sanitizing_robust_connection_reconnects_through_the_factory() -> None:
    async def made() -> Any:
        return SafeHeaderRobustConnection(URL("amqp://guest:guest@127.0.0.1:1/"))

    connection = asyncio.run(made())
    # every (re)connection passes these kwargs to aiormq
    assert isinstance(
        connection.kwargs["transport_factory"], SafeHeaderTransportFactory
    )
