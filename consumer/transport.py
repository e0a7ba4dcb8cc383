"""The consumer's pika boundary: receive deliveries, apply outcomes to the broker.

One ``BlockingConnection`` carries two channels: the consuming channel (manual
acks, a prefetch window) and a confirm-mode channel for quarantine publishes, so
that a quarantined message is acknowledged only after the broker has confirmed
its copy. pika types never leave this module: deliveries become
:class:`~consumer.message.Delivery` values as they arrive.

Content headers are decoded by our own decoder (consumer/header_frames.py),
which never fails: what it cannot decode becomes the delivery's ``defects``,
and the quarantine copy carries only values pika can encode again, within
the frame size, so that no delivery can stop the consumer or block the queue.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pika
import pika.spec
from envelope_mq.consumer.header_frames import (
    SafeHeaderConnection,
    connection_class,
    header_frame_budget,
    negotiated_frame_max,
)
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.outcome import Outcome
from envelope_mq.consumer.outlet import Framer, Outlet
from envelope_mq.consumer.streams import StreamCursor, stream_offset
from envelope_mq.shared.amqp import (
    ConnectionOptions,
    Topology,
    broker_errors,
    connect_blocking,
)
from envelope_mq.shared.content_header import ContentProperties
from envelope_mq.shared.errors import BrokerUnavailableError

__all__ = [
    "QUARANTINE_DEFECTS_HEADER",
    "QUARANTINE_DETAIL_HEADER",
    "QUARANTINE_HEADER_PREFIX",
    "QUARANTINE_KMS_CODE_HEADER",
    "QUARANTINE_QUEUE_HEADER",
    "QUARANTINE_REASON_HEADER",
    "QUARANTINE_STREAM_OFFSET_HEADER",
    "QUARANTINE_TIME_HEADER",
    "BlockingTransport",
    "copy_properties",
    "copyable_headers",
    "quarantine_headers",
    "quarantine_properties",
]

logger = logging.getLogger(__name__)

QUARANTINE_HEADER_PREFIX = "x-emq-quarantine-"
QUARANTINE_REASON_HEADER = "x-emq-quarantine-reason"
QUARANTINE_KMS_CODE_HEADER = "x-emq-quarantine-kms-code"
QUARANTINE_DETAIL_HEADER = "x-emq-quarantine-detail"  # a handler's Reject reason
QUARANTINE_QUEUE_HEADER = "x-emq-quarantine-queue"
QUARANTINE_TIME_HEADER = "x-emq-quarantine-time"
# Where in its stream the quarantined message stays (a stream drops nothing).
QUARANTINE_STREAM_OFFSET_HEADER = "x-emq-quarantine-stream-offset"
# What was dropped or rewritten on the way to quarantine (a malformed header).
QUARANTINE_DEFECTS_HEADER = "x-emq-quarantine-defects"
_MAX_DEFECTS_SHOWN = 10
_MAX_DEFECTS_TEXT = 1000  # characters


class BlockingTransport:
    """One connection to the broker, consuming ``topology.queue``.

    Not thread-safe: pika's BlockingConnection belongs to the thread using it.
    Every method may raise pika exceptions; callers run them inside
    :meth:`errors`, which turns them into ``BrokerError``.

    On a stream (``topology.is_stream``) each (re)subscription starts where
    ``cursor`` says, and nothing is ever nacked: RabbitMQ closes the
    connection on a basic.nack on a stream (540 NOT_IMPLEMENTED), and an ack
    there only returns credit.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        topology: Topology,
        *,
        prefetch: int = 1000,
        ack_batch: int = 50,
        options: ConnectionOptions | None = None,
        cursor: StreamCursor | None = None,
        outlet: Callable[[Any], None] | None = None,
        framer: Framer | None = None,
        decode_headers: bool = True,
    ) -> None:
        """``outlet``: also open an :class:`~consumer.outlet.Outlet` (with
        ``framer``) on every connection, after calling ``outlet(channel)`` to
        declare (or check) where it publishes; :attr:`outlet` while connected.
        ``decode_headers=False``: pika decodes content headers, as on a pika
        without the hook (consumer/header_frames.py)."""
        if prefetch < 1 or not 1 <= ack_batch <= prefetch:
            raise ValueError("need prefetch >= 1 and 1 <= ack_batch <= prefetch")
        if topology.is_stream and cursor is None:
            cursor = StreamCursor()
        self._urls = urls
        self._topology = topology
        self.cursor = cursor if topology.is_stream else None
        self._prefetch = prefetch
        self._ack_batch = ack_batch
        self._options = options
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._confirm_channel: Any = None
        self._outlet_declare = outlet
        self._framer = framer
        self._decode_headers = decode_headers
        self.outlet: Outlet | None = None
        self._header_budget = header_frame_budget(4096)
        self._unacked_tag = 0  # highest processed tag not yet acked on the wire
        self._unacked = 0
        #: Deliveries received and not yet processed, oldest first.
        self.pending: collections.deque[Delivery] = collections.deque()

    @contextlib.contextmanager
    def errors(self, doing: str = "consume") -> Iterator[None]:
        """Translate pika and socket errors raised in the block into BrokerError."""
        with broker_errors(f"{doing} from {self._topology.queue!r}"):
            yield

    def open(self) -> None:
        """Connect, declare the topology and start consuming.

        On failure nothing stays open; raises BrokerError.
        """
        kind = connection_class(self._decode_headers)
        on_message = (
            self._on_message if kind is SafeHeaderConnection else self._on_pika_message
        )
        connection = connect_blocking(self._urls, self._options, connection_class=kind)
        try:
            with self.errors("open"):
                channel = connection.channel()
                self._topology.declare(channel)
                channel.basic_qos(prefetch_count=self._prefetch)
                confirm = connection.channel()
                confirm.confirm_delivery()
                outlet = None
                if self._outlet_declare is not None:
                    self._outlet_declare(channel)
                    outlet = Outlet(connection, self._framer)
                # Deliveries may arrive from here on: the state must be fresh.
                self._unacked_tag = self._unacked = 0
                self.pending.clear()
                channel.basic_consume(
                    self._topology.queue,
                    on_message,
                    auto_ack=False,
                    arguments=(
                        None if self.cursor is None else self.cursor.consume_arguments()
                    ),
                )
        except BaseException:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if connection.is_open:
                    connection.close()
            raise
        self._connection = connection
        self._channel, self._confirm_channel = channel, confirm
        self.outlet = outlet
        self._header_budget = header_frame_budget(negotiated_frame_max(connection))

    def _on_message(
        self,
        _channel: object,
        method: pika.spec.Basic.Deliver,
        properties: ContentProperties,
        body: bytes,
    ) -> None:
        # The hot path: one allocation, no logging.
        self.pending.append(
            Delivery(
                body,
                properties.headers or {},
                properties.message_id,
                properties.timestamp,
                properties.content_type,
                properties.content_encoding,
                properties.type,
                method.redelivered,
                method.delivery_tag,
                properties,
                properties.defects,
            )
        )

    def _on_pika_message(
        self,
        _channel: object,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        """The fallback's deliveries: pika decoded them, nothing was dropped."""
        self.pending.append(
            Delivery(
                body,
                properties.headers or {},
                properties.message_id,
                properties.timestamp,
                properties.content_type,
                properties.content_encoding,
                properties.type,
                method.redelivered,
                method.delivery_tag,
                properties,
                (),
            )
        )

    @property
    def consuming(self) -> bool:
        """False once the broker cancelled our consumer (queue deleted, failover)."""
        return self._channel is not None and bool(self._channel.consumer_tags)

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for deliveries (and service heartbeats)."""
        outlet = self.outlet
        if outlet is None:
            self._live().process_data_events(time_limit=timeout)
            return
        outlet.flush()
        outlet.armed = len(outlet) > 0  # a confirm ends the wait
        try:
            self._live().process_data_events(time_limit=timeout)
        finally:
            outlet.armed = False

    def sleep(self, seconds: float, stop: Callable[[], bool]) -> None:
        """Wait ``seconds`` while servicing heartbeats; return early when ``stop()``."""
        connection = self._live()
        deadline = time.monotonic() + seconds
        while not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            connection.sleep(min(left, 0.25))

    def _live(self) -> pika.BlockingConnection:
        if self._connection is None:
            raise BrokerUnavailableError("not connected to RabbitMQ")
        return self._connection

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery``; acks go out with multiple=True in small batches.

        Deliveries are processed in order, so every tag below the batch's last
        one has been settled (acked, requeued or quarantined) already.
        """
        self._unacked_tag = delivery.delivery_tag
        self._unacked += 1
        if self._unacked >= self._ack_batch:
            self._channel.basic_ack(self._unacked_tag, multiple=True)
            self._unacked = 0

    def flush_acks(self) -> None:
        """Send the acknowledgements still held back by batching."""
        if self._unacked:
            self._channel.basic_ack(self._unacked_tag, multiple=True)
            self._unacked = 0

    def requeue(self, delivery: Delivery) -> None:
        """Return ``delivery`` to its queue, for another try (not on a stream)."""
        if self.cursor is not None:
            raise RuntimeError("a stream cannot requeue: retry in place instead")
        self._channel.basic_nack(delivery.delivery_tag, multiple=False, requeue=True)

    def quarantine(self, delivery: Delivery, outcome: Outcome) -> None:
        """Copy ``delivery`` to the quarantine queue, wait for the confirm, then ack.

        Raises MessageNackedError/MessageUnroutableError (through :meth:`errors`)
        when the broker does not take the copy; the original stays unacked.
        """
        properties = quarantine_properties(
            delivery.raw,
            outcome,
            self._topology.queue,
            time.time(),
            budget=self._header_budget,
            stream_offset=(
                None if self.cursor is None else stream_offset(delivery.headers)
            ),
        )
        self._confirm_channel.basic_publish(
            "",
            self._topology.quarantine_queue,
            delivery.body,
            properties,
            mandatory=True,
        )
        self.ack(delivery)

    def close(self) -> None:
        """Stop consuming, settle what is held, requeue the rest and disconnect.

        Never raises: on a dead connection the broker requeues whatever was
        unacknowledged anyway.
        """
        connection, channel = self._connection, self._channel
        self._connection = self._channel = self._confirm_channel = None
        self.outlet = None
        self.pending.clear()
        if connection is None:
            return
        try:
            if channel is not None and channel.is_open:
                for tag in channel.consumer_tags:
                    channel.basic_cancel(tag)
                if self._unacked:
                    channel.basic_ack(self._unacked_tag, multiple=True)
                if self.cursor is None:
                    # delivery tag 0 with multiple: every delivery outstanding
                    channel.basic_nack(0, multiple=True, requeue=True)
            if connection.is_open:
                connection.close()
        except (pika.exceptions.AMQPError, OSError) as exc:
            logger.debug("broker connection closed uncleanly: %s", type(exc).__name__)
        finally:
            self._unacked = 0

    def abandon(self) -> None:
        """Drop a broken connection without talking to the broker."""
        connection = self._connection
        self._connection = self._channel = self._confirm_channel = None
        self.outlet = None
        self.pending.clear()
        self._unacked = 0
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if connection.is_open:
                    connection.close()


def quarantine_properties(
    original: object,
    outcome: Outcome,
    queue: str,
    now: float,
    *,
    budget: int = header_frame_budget(4096),
    stream_offset: int | None = None,
) -> pika.BasicProperties:
    """The original properties with the quarantine headers added, persistent.

    ``expiration`` is dropped (a quarantined message waits for a human) and
    ``user_id`` too (the broker checks it against the publishing user).
    Header values pika cannot encode (floats) are written as text, and when
    the copy's property list would exceed ``budget`` bytes (one frame) the
    original headers are dropped; ``x-emq-quarantine-defects`` says what was
    dropped or rewritten, the decoder's ``defects`` first. ``stream_offset``
    (a stream's delivery) becomes ``x-emq-quarantine-stream-offset``.
    """
    if not isinstance(original, ContentProperties | pika.BasicProperties):
        raise TypeError("quarantine needs the delivery's properties")
    notes = list(original.defects) if isinstance(original, ContentProperties) else []
    kept = {
        name: value
        for name, value in copyable_headers(original.headers or {}, notes).items()
        if not name.startswith(QUARANTINE_HEADER_PREFIX)
    }
    ours = quarantine_headers({}, outcome, queue, now)
    if stream_offset is not None:
        ours[QUARANTINE_STREAM_OFFSET_HEADER] = stream_offset
    properties = copy_properties(original, {**kept, **ours, **_described(notes)})
    if kept and _encoded_size(properties) > budget:
        notes.append(
            f"headers: all {len(kept)} dropped, the copy would not fit in one frame"
        )
        properties = copy_properties(original, {**ours, **_described(notes)})
    return properties


def copyable_headers(headers: Mapping[Any, Any], notes: list[str]) -> dict[str, Any]:
    """``headers`` as any client library can encode them again, changes in ``notes``.

    Names that are not str are dropped; floats are written as text (pika cannot
    encode a float, pamqp writes every float in 32 bits: 1e300 overflows).
    """
    return {
        name: _encodable(value, f"headers[{name!r}]", notes)
        for name, value in headers.items()
        if isinstance(name, str)
    }


def _encodable(value: object, where: str, notes: list[str]) -> object:
    """``value`` as pika can encode it: floats (which pika cannot) become text."""
    if isinstance(value, float):
        notes.append(f"{where}: float written as text")
        return repr(value)
    if isinstance(value, dict):
        return {
            k: _encodable(v, f"{where}[{k!r}]", notes)
            for k, v in value.items()
            if isinstance(k, str)
        }
    if isinstance(value, list):
        return [_encodable(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    return value


def _described(notes: list[str]) -> dict[str, str]:
    if not notes:
        return {}
    text = "; ".join(notes[:_MAX_DEFECTS_SHOWN])
    if len(notes) > _MAX_DEFECTS_SHOWN:
        text += f"; and {len(notes) - _MAX_DEFECTS_SHOWN} more"
    if len(text) > _MAX_DEFECTS_TEXT:
        text = text[: _MAX_DEFECTS_TEXT - 3] + "..."
    return {QUARANTINE_DEFECTS_HEADER: text}


def _encoded_size(properties: pika.BasicProperties) -> int:
    return sum(len(piece) for piece in properties.encode())


def quarantine_headers(
    headers: Mapping[str, Any], outcome: Outcome, queue: str, now: float
) -> dict[str, Any]:
    """``headers`` with the quarantine headers of ``outcome`` (any client library)."""
    result: dict[str, Any] = {
        k: v for k, v in headers.items() if not k.startswith(QUARANTINE_HEADER_PREFIX)
    }
    result[QUARANTINE_REASON_HEADER] = str(outcome.reason)
    if outcome.kms_code:
        result[QUARANTINE_KMS_CODE_HEADER] = outcome.kms_code
    if outcome.detail:
        result[QUARANTINE_DETAIL_HEADER] = outcome.detail
    result[QUARANTINE_QUEUE_HEADER] = queue
    result[QUARANTINE_TIME_HEADER] = int(now)
    return result


def copy_properties(
    original: pika.BasicProperties | ContentProperties, headers: Mapping[str, Any]
) -> pika.BasicProperties:
    """``original`` with other ``headers``, persistent, without expiration/user_id."""
    return pika.BasicProperties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=dict(headers),
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
        cluster_id=original.cluster_id,
    )
