"""The benchmark's own broker housekeeping: unique queues, waits, purges, clean-up.

Every queue the benchmark makes has a unique name and expires on its own
(``x-expires``), and every exchange auto-deletes, so an interrupted run
leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pika

from envelope_mq.shared.amqp import (
    QueueType,
    Topology,
    broker_errors,
    connect_blocking,
)
from envelope_mq.shared.errors import BrokerError

__all__ = ["QUEUE_EXPIRES_MS", "BenchBroker"]

QUEUE_EXPIRES_MS = 600_000
_POLL_SECONDS = 0.02


class BenchBroker:
    """An admin connection for declaring, watching and emptying bench queues."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)
        self.tag = uuid.uuid4().hex[:8]
        self._connection = connect_blocking(self.urls)
        self._channel: Any = self._connection.channel()
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    def _open_channel(self) -> Any:
        """The admin channel, reconnected if the broker dropped it meanwhile.

        This connection sits idle while a long section runs on others (the
        celery and asyncio sections take minutes), and a blocking connection
        answers heartbeats only when called: the broker may have closed it for
        missed heartbeats. Reconnecting here keeps one such gap from ending
        the whole run.
        """
        try:
            self._connection.process_data_events(0)
            if self._channel.is_open:
                return self._channel
        except (pika.exceptions.AMQPError, OSError):
            pass
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._connection.close()
        self._connection = connect_blocking(self.urls)
        self._channel = self._connection.channel()
        return self._channel

    @property
    def url(self) -> str:
        """The broker URL the benchmark's clients connect to."""
        return self.urls[0]

    def server_version(self) -> str:
        """The RabbitMQ version the broker announced when we connected."""
        # pika keeps the connection.start properties on its connection object.
        properties = getattr(self._connection, "_impl", None)
        server = getattr(properties, "server_properties", None) or {}
        version = server.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)

    def plain_queue(self, name: str, queue_type: QueueType = "classic") -> str:
        """Declare a durable, expiring queue for the plain pika side; its name."""
        queue = f"emq-bench-{self.tag}-{name}"
        arguments = {"x-expires": QUEUE_EXPIRES_MS, "x-queue-type": queue_type}
        with broker_errors(f"declare {queue!r}"):
            self._open_channel().queue_declare(queue, durable=True, arguments=arguments)
        self._queues.append(queue)
        return queue

    def topology(self, name: str, queue_type: QueueType = "classic") -> Topology:
        """A durable, expiring topology of our own (exchange, queue, quarantine)."""
        topology = Topology(
            queue=f"emq-bench-{self.tag}-{name}",
            exchange=f"emq-bench-{self.tag}-{name}-x",
            queue_type=queue_type,
            queue_arguments={"x-expires": QUEUE_EXPIRES_MS},
            exchange_auto_delete=True,
        )
        topology.declare(self._open_channel())
        self._queues += [topology.queue, topology.quarantine_queue]
        self._exchanges.append(topology.exchange)
        return topology

    def count(self, queue: str) -> int:
        """Messages ready in ``queue`` now."""
        with broker_errors(f"inspect {queue!r}"):
            frame = self._open_channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)

    def wait_for_count(self, queue: str, expected: int, timeout: float = 120.0) -> None:
        """Wait until ``queue`` holds exactly ``expected`` ready messages.

        Unconfirmed publishes return before the broker has stored the message,
        so a round is only over once the queue shows it.
        """
        deadline = time.monotonic() + timeout
        while (found := self.count(queue)) != expected:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{queue!r} holds {found} messages, expected {expected}"
                )
            self._connection.sleep(_POLL_SECONDS)

    def purge(self, queue: str) -> None:
        """Drop every ready message of ``queue``."""
        with broker_errors(f"purge {queue!r}"):
            self._open_channel().queue_purge(queue)

    def stream_topology(self, name: str) -> Topology:
        """A stream topology of our own; its quarantine queue expires.

        A stream cannot expire: it is deleted by :meth:`close`, and its
        retention (one hour, 1 GB) bounds what an interrupted run leaves.
        """
        topology = Topology(
            queue=f"emq-bench-{self.tag}-{name}",
            exchange=f"emq-bench-{self.tag}-{name}-x",
            queue_type="stream",
            queue_arguments={"x-max-age": "1h", "x-max-length-bytes": 1_000_000_000},
            quarantine_arguments={"x-expires": QUEUE_EXPIRES_MS},
            exchange_auto_delete=True,
        )
        topology.declare(self._open_channel())
        self._queues += [topology.queue, topology.quarantine_queue]
        self._exchanges.append(topology.exchange)
        return topology

    def close(self) -> None:
        """Delete what the benchmark declared, then disconnect; never raises."""
        with contextlib.suppress(BrokerError, pika.exceptions.AMQPError, OSError):
            channel = self._open_channel()
            for queue in self._queues:
                channel.queue_delete(queue)
            for exchange in self._exchanges:
                channel.exchange_delete(exchange)
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._connection.close()
