"""The baselines: plain pika, written the way a user would write it without us.

No encryption, no confirms on the publish side, and nothing handicapped: the
publisher is the textbook ``BlockingConnection`` loop, publishing persistent
messages straight to the queue through the default exchange; the consumer is
the textbook ``basic_consume`` callback with manual acks and a prefetch of
1,000. Connections are opened as pika's documentation shows, from the URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

__all__ = ["PREFETCH", "plain_consume", "plain_publish"]

PREFETCH = 1000


def plain_publish(url: str, queue: str, body: bytes, count: int) -> float:
    """Publish ``count`` persistent messages without confirms; seconds the loop took."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish(
                exchange="", routing_key=queue, body=body, properties=properties
            )
        return time.perf_counter() - started
    finally:
        connection.close()


def plain_consume(
    url: str, queue: str, count: int, handler: Callable[[bytes], object]
) -> float:
    """Consume ``count`` messages with manual acks; seconds from connecting to the last.

    The clock starts before the connection opens, as it does for our consumer,
    whose ``run()`` connects and declares its topology inside the timing.
    """
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    finished = started
    seen = 0

    def on_message(
        channel: Any, method: Any, _properties: pika.BasicProperties, body: bytes
    ) -> None:
        nonlocal seen, finished
        handler(body)
        channel.basic_ack(delivery_tag=method.delivery_tag)
        seen += 1
        if seen == count:
            finished = time.perf_counter()
            channel.stop_consuming()

    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.basic_consume(queue=queue, on_message_callback=on_message)
        channel.start_consuming()
    finally:
        connection.close()
    return finished - started
