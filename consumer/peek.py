"""Look at messages as the broker stores them, without consuming them.

Content headers are read by our own decoder (consumer/header_frames.py), not
pika's: a quarantine queue is where hostile messages end up, and one pika
cannot decode would otherwise break the connection on every look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envelope_mq.consumer.header_frames import connection_class
from envelope_mq.shared.amqp import ConnectionOptions, broker_errors, connect_blocking

__all__ = ["StoredMessage", "peek"]


@dataclass(frozen=True)
class StoredMessage:
    """A message exactly as it sits in a queue: sealed body, headers, properties."""

    body: bytes = field(repr=False)
    headers: dict[str, object]
    message_id: str | None
    timestamp: int | None
    content_type: str | None
    defects: tuple[str, ...] = ()  # what the content header lost: not decodable


def peek(
    urls: str | Sequence[str],
    queue: str,
    limit: int = 1,
    *,
    options: ConnectionOptions | None = None,
) -> list[StoredMessage]:
    """Copy up to ``limit`` messages from the head of ``queue``; they stay queued.

    The messages are fetched unacknowledged and put back with a requeue, so
    they are delivered again later (flagged as redelivered).

    Raises:
        BrokerError: the broker could not be reached or the queue does not exist.
    """
    connection = connect_blocking(urls, options, connection_class=connection_class())
    try:
        with broker_errors(f"peek at {queue!r}"):
            channel = connection.channel()
            found: list[StoredMessage] = []
            last_tag = 0
            for _ in range(limit):
                method, properties, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                last_tag = method.delivery_tag
                found.append(
                    StoredMessage(
                        body=body,
                        headers=dict(properties.headers or {}),
                        message_id=properties.message_id,
                        timestamp=properties.timestamp,
                        content_type=properties.content_type,
                        # pika's own properties (the fallback) have no defects
                        defects=getattr(properties, "defects", ()),
                    )
                )
            if last_tag:
                channel.basic_nack(last_tag, multiple=True, requeue=True)
            return found
    finally:
        with broker_errors("close"):
            if connection.is_open:
                connection.close()
