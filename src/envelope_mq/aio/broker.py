"""The aio-pika boundary: connect, declare, and convert messages both ways.

Only this module and the publisher/consumer modules beside it touch aio-pika
types; errors leave as :mod:`~envelope_mq.shared.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from envelope_mq.aio.frames import SafeHeaderConnection, pamqp_encodable
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.transport import QUARANTINE_DEFECTS_HEADER
from envelope_mq.shared.amqp import ConnectionOptions, Topology, redact_url
from envelope_mq.shared.envelope import SealedMessage
from envelope_mq.shared.errors import BrokerError, BrokerUnavailableError

__all__ = [
    "CONNECTION_ERRORS",
    "connect",
    "declare",
    "delivery_of",
    "delivery_of_frame",
    "outgoing_message",
    "outgoing_properties",
    "quarantine_properties",
]

# What a lost connection or channel looks like from aio-pika and aiormq.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq: "Connection closed" / writer gone
)


async def connect(
    url: str, options: ConnectionOptions
) -> aio_pika.abc.AbstractConnection:
    """Open one (non-robust: we reconnect ourselves) connection to ``url``.

    Raises BrokerUnavailableError; the text names the URL without password.
    """
    try:
        return await aio_pika.connect(
            url,
            timeout=options.socket_timeout,
            client_properties={"connection_name": options.connection_name},
            heartbeat=options.heartbeat,
            # content headers pamqp cannot decode are rewritten, not fatal
            connection_class=SafeHeaderConnection,
        )
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise BrokerUnavailableError(
            f"cannot connect to RabbitMQ at {redact_url(url)}: access refused"
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailableError(
            f"cannot connect to RabbitMQ at {redact_url(url)}: {type(exc).__name__}"
        ) from exc


async def declare(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> None:
    """Declare what ``Topology.declare`` declares, on an aio-pika channel.

    Raises BrokerError when the broker refuses (say, a queue exists with other
    arguments).
    """
    try:
        exchange = await channel.declare_exchange(
            topology.exchange,
            aio_pika.ExchangeType.TOPIC,
            durable=True,
            auto_delete=topology.exchange_auto_delete,
        )
        queue = await channel.declare_queue(
            topology.queue, durable=True, arguments=topology.queue_declare_arguments()
        )
        await channel.declare_queue(
            topology.quarantine_queue,
            durable=True,
            arguments=topology.quarantine_declare_arguments(),
        )
        await queue.bind(exchange, routing_key=topology.binding_key)
    except aiormq.exceptions.ChannelClosed as exc:
        raise BrokerError(f"declare queue {topology.queue!r}: {exc}") from exc


def outgoing_properties(sealed: SealedMessage) -> Basic.Properties:
    """The persistent AMQP properties of ``sealed``, exactly as bound.

    What :func:`outgoing_message` would give aiormq, without an aio-pika
    Message in between (ten times the cost of building these).
    """
    meta = sealed.meta
    return Basic.Properties(
        content_type=meta.content_type,
        content_encoding=meta.content_encoding,
        # flat, as the wire format makes them; pamqp encodes bytes only as
        # a bytearray
        headers={
            k: bytearray(v) if isinstance(v, bytes) else v
            for k, v in sealed.headers.items()
        },
        delivery_mode=2,  # persistent
        message_id=meta.message_id,
        timestamp=datetime.fromtimestamp(meta.timestamp, UTC),
        message_type=meta.type,
    )


def outgoing_message(sealed: SealedMessage) -> aio_pika.Message:
    """The persistent AMQP message of ``sealed``, properties exactly as bound."""
    meta = sealed.meta
    return aio_pika.Message(
        sealed.body,
        # v2's x-emq is bytes: pamqp writes a byte array ("x") from a bytearray
        headers=pamqp_encodable(dict(sealed.headers)),
        message_id=meta.message_id,
        timestamp=meta.timestamp,
        content_type=meta.content_type,
        content_encoding=meta.content_encoding,
        type=meta.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def delivery_of(message: aio_pika.abc.AbstractIncomingMessage, raw: object) -> Delivery:
    """The consumer's view of one delivery; ``raw`` is the caller's handle on it.

    A content header that had to be rewritten (aio/frames.py) says so in
    ``x-emq-quarantine-defects``; that makes the delivery malformed.
    """
    headers = dict(message.headers or {})
    defects = headers.pop(QUARANTINE_DEFECTS_HEADER, None)
    return Delivery(
        body=message.body,
        headers=headers,
        message_id=message.message_id,
        timestamp=_seconds(message.timestamp),
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        type=message.type,
        redelivered=bool(message.redelivered),
        delivery_tag=message.delivery_tag or 0,
        raw=raw,
        defects=() if defects is None else (str(defects),),
    )


def delivery_of_frame(message: aiormq.abc.DeliveredMessage, raw: object) -> Delivery:
    """As :func:`delivery_of`, from aiormq's delivery (no aio-pika object made)."""
    properties = message.header.properties
    delivery = message.delivery
    headers = dict(properties.headers or {})
    defects = headers.pop(QUARANTINE_DEFECTS_HEADER, None)
    return Delivery(
        body=message.body,
        headers=headers,
        message_id=properties.message_id,
        timestamp=_seconds(properties.timestamp),
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        type=properties.message_type,
        redelivered=bool(getattr(delivery, "redelivered", False)),
        delivery_tag=getattr(delivery, "delivery_tag", 0) or 0,
        raw=raw,
        defects=() if defects is None else (str(defects),),
    )


def quarantine_properties(
    original: Basic.Properties, headers: Mapping[str, Any]
) -> Basic.Properties:
    """``original`` with ``headers``, persistent, without expiration and user_id.

    The same properties ``consumer.transport.copy_properties`` keeps.
    """
    return Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=dict(headers),
        delivery_mode=2,  # persistent
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        message_type=original.message_type,
        app_id=original.app_id,
    )


def _seconds(value: datetime | None) -> int | None:
    # pamqp decodes the AMQP timestamp (whole seconds) to an aware datetime.
    return None if value is None else int(value.timestamp())
