"""Looking into the broker's queues past the clients under test (tests/ is on sys.path).

How many messages a queue holds, and what they are, read with a plain pika
connection: what a test checks must not go through the code it checks.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pika

__all__ = ["delete", "drain", "queue_depth", "throwaway_queue"]


def _connect(urls: str | Sequence[str]) -> pika.BlockingConnection:
    """A connection to the first broker of ``urls`` that answers."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    return pika.BlockingConnection([pika.URLParameters(u) for u in listed])


def queue_depth(urls: str | Sequence[str], queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare: it must exist)."""
    connection = _connect(urls)
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def drain(urls: str | Sequence[str], queue: str) -> list[tuple[Any, bytes]]:
    """Every message now in ``queue`` as (properties, body), taken off it."""
    connection = _connect(urls)
    received: list[tuple[Any, bytes]] = []
    try:
        channel = connection.channel()
        expected = channel.queue_declare(queue, passive=True).method.message_count
        channel.basic_qos(prefetch_count=1000)
        for method, properties, body in channel.consume(
            queue, auto_ack=True, inactivity_timeout=10
        ):
            if method is None:
                break
            received.append((properties, body))
            if len(received) == expected:
                break
        channel.cancel()
    finally:
        connection.close()
    return received


def delete(url: str, queues: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    """Delete ``queues`` and ``exchanges`` that a test declared without expiry."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


@contextlib.contextmanager
def throwaway_queue(url: str, prefix: str) -> Iterator[str]:
    """A fresh queue name ``prefix-<random>``; afterwards that queue and its
    quarantine queue are deleted (the commands declare durable queues that do
    not expire, as a deployment's would be)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    yield name
    delete(url, [name, f"{name}.quarantine"])
