"""Copy a delivery to ``<queue>.quarantine`` on a confirm channel of its own connection.

For consumers that do not own their channels (FastStream's subscribers): one
aiormq confirm-mode channel per connection, opened on first use, on which the
quarantine queue is looked up (and declared, durable, if missing) and the copy
published mandatory and persistent. :meth:`QuarantinePublisher.publish`
returns only once the broker has confirmed the copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from envelope_mq.shared.errors import MessageNackedError, MessageUnroutableError

__all__ = ["QuarantinePublisher"]


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
        headers: Mapping[str, Any],
    ) -> None:
        """Copy ``original`` with ``headers`` to ``queue``; return once confirmed.

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
            properties=Basic.Properties(
                content_type=original.content_type,
                content_encoding=original.content_encoding,
                headers=dict(headers),
                delivery_mode=2,  # persistent
                priority=original.priority,
                correlation_id=original.correlation_id,
                reply_to=original.reply_to,
                message_id=original.message_id,
                timestamp=original.timestamp,
                message_type=original.type,
                app_id=original.app_id,
            ),
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
