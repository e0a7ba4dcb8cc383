"""Quarantine copies on aiormq: their properties, and a publisher for them.

:func:`quarantine_copy` builds the copy's properties for the asyncio
consumer and the FastStream middleware alike: the headers any client can
encode again, the quarantine headers, what aio/frames.py had to drop, and
only ours when the rest would not fit in one frame.

For consumers that do not own their channels (FastStream's subscribers): one
aiormq confirm-mode channel per connection, opened on first use, on which the
quarantine queue is looked up (and declared, durable, if missing) and the copy
published mandatory and persistent. :meth:`QuarantinePublisher.publish`
returns only once the broker has confirmed the copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from envelope_mq.aio.broker import quarantine_properties
from envelope_mq.aio.frames import HEADER_FRAME_BUDGET, pamqp_encodable
from envelope_mq.consumer.outcome import Outcome
from envelope_mq.consumer.transport import (
    QUARANTINE_DEFECTS_HEADER,
    copyable_headers,
    quarantine_headers,
)
from envelope_mq.shared.errors import MessageNackedError, MessageUnroutableError

__all__ = ["QuarantinePublisher", "incoming_properties", "quarantine_copy"]

_MAX_DEFECTS_TEXT = 1000  # characters


def quarantine_copy(
    properties: Basic.Properties,
    defects: Sequence[str],
    outcome: Outcome,
    queue: str,
    now: float,
) -> Basic.Properties:
    """The properties of the quarantine copy of a delivery from ``queue``.

    ``defects`` are what the delivery's content header lost on the way in.
    """
    notes = list(defects)
    headers = quarantine_headers(
        pamqp_encodable(copyable_headers(properties.headers or {}, notes)),
        outcome,
        queue,
        now,
    )
    if notes:
        headers[QUARANTINE_DEFECTS_HEADER] = "; ".join(notes)[:_MAX_DEFECTS_TEXT]
    copy = quarantine_properties(properties, headers)
    if len(copy.marshal()) > HEADER_FRAME_BUDGET:
        # The broker would close the connection on a frame over frame_max,
        # and the message would come back forever: keep ours only.
        notes.append("headers: all dropped, the copy would not fit in one frame")
        headers = quarantine_headers({}, outcome, queue, now)
        headers[QUARANTINE_DEFECTS_HEADER] = "; ".join(notes)[-_MAX_DEFECTS_TEXT:]
        copy = quarantine_properties(properties, headers)
    return copy


def incoming_properties(
    message: aio_pika.abc.AbstractIncomingMessage,
) -> Basic.Properties:
    """The properties ``message`` was delivered with, as aiormq holds them."""
    return Basic.Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=dict(message.headers or {}),
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        message_type=message.type,
        app_id=message.app_id,
    )


class QuarantinePublisher:
    """Publishes quarantine copies, confirmed, on the delivering connection."""

    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[
            aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel
        ] = weakref.WeakKeyDictionary()
        self._declared: set[tuple[int, str]] = set()

    async def publish(
        self,
        original: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        properties: Basic.Properties,
    ) -> None:
        """Copy ``original``'s body to ``queue``; return once confirmed.

        Raises:
            MessageUnroutableError: the queue could not be had.
            MessageNackedError: the broker refused the copy.
            aiormq/aio-pika connection errors: the connection is gone.
        """
        connection = original.channel.connection
        channel = await self._channel(connection, queue)
        result = await channel.basic_publish(
            original.body,
            routing_key=queue,
            properties=properties,
            mandatory=True,
        )
        if isinstance(result, Basic.Ack):
            return
        if isinstance(result, aiormq.abc.DeliveredMessage):
            raise MessageUnroutableError(f"quarantine: no queue {queue!r}")
        raise MessageNackedError("quarantine: the broker nacked the copy")

    async def _channel(
        self, connection: aiormq.abc.AbstractConnection, queue: str
    ) -> aiormq.abc.AbstractChannel:
        channel = self._channels.get(connection)
        if channel is None or channel.is_closed:
            channel = self._channels[connection] = await connection.channel(
                publisher_confirms=True
            )
        if (id(channel), queue) in self._declared:
            return channel
        try:
            # Whoever declared it (a sync consumer, say) chose its arguments.
            await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            # The passive look closed the channel: a new one declares it.
            channel = self._channels[connection] = await connection.channel(
                publisher_confirms=True
            )
            await channel.queue_declare(queue, durable=True)
        self._declared.add((id(channel), queue))
        return channel
