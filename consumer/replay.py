"""Move quarantined messages back to their queue (after, say, a key was re-enabled).

Each message is taken from ``<queue>.quarantine``, re-published to ``<queue>``
without the quarantine headers, and acknowledged only once the broker has
confirmed the copy: a crash in between leaves a duplicate, never a loss.
Messages filtered out by reason stay unacknowledged until the end and then go
back to the quarantine queue untouched.

Content headers are read by our own decoder (consumer/header_frames.py), not
pika's, and re-encoded as any client can (``copyable_headers``): whatever
could not be decoded or encoded is dropped and logged, never fatal.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import pika
from envelope_mq.consumer.header_frames import connection_class
from envelope_mq.consumer.transport import (
    QUARANTINE_HEADER_PREFIX,
    QUARANTINE_REASON_HEADER,
    copy_properties,
    copyable_headers,
)
from envelope_mq.shared.amqp import (
    ConnectionOptions,
    Topology,
    broker_errors,
    connect_blocking,
)
from envelope_mq.shared.content_header import ContentProperties

__all__ = ["ReplayResult", "replay_quarantine"]

logger = logging.getLogger(__name__)

# Headers the broker adds on its own; a replayed message starts afresh.
_BROKER_HEADERS = frozenset(
    {"x-delivery-count", "x-death", "x-first-death-queue", "x-stream-offset"}
)


@dataclass
class ReplayResult:
    """What a replay did."""

    moved: Counter[str] = field(default_factory=Counter)  # by quarantine reason
    skipped: int = 0  # filtered out by reason, left in quarantine

    @property
    def total_moved(self) -> int:
        """How many messages went back to the queue."""
        return sum(self.moved.values())


def replay_quarantine(
    urls: str | Sequence[str],
    topology: Topology,
    *,
    limit: int | None = None,
    reasons: Collection[str] | None = None,
    options: ConnectionOptions | None = None,
) -> ReplayResult:
    """Move up to ``limit`` quarantined messages (with one of ``reasons``) back.

    Only the messages already in quarantine when the replay starts are looked
    at, so a message that fails again is not replayed twice in one run.

    Raises:
        BrokerError: the broker could not be reached or refused a message.
    """
    result = ReplayResult()
    connection = connect_blocking(urls, options, connection_class=connection_class())
    try:
        with broker_errors(f"replay {topology.quarantine_queue!r}"):
            channel = connection.channel()
            topology.declare(channel)
            channel.confirm_delivery()
            waiting = channel.queue_declare(
                topology.quarantine_queue,
                passive=True,
            ).method.message_count
            for _ in range(waiting):
                if limit is not None and result.total_moved >= limit:
                    break
                method, properties, body = channel.basic_get(
                    topology.quarantine_queue, auto_ack=False
                )
                if method is None:
                    break
                reason = str((properties.headers or {}).get(QUARANTINE_REASON_HEADER))
                if reasons is not None and reason not in reasons:
                    result.skipped += 1  # stays unacked: back to quarantine at close
                    continue
                channel.basic_publish(
                    "",
                    topology.queue,
                    body,
                    _restored(properties),
                    mandatory=True,
                )
                channel.basic_ack(method.delivery_tag)
                result.moved[reason] += 1
    finally:
        with broker_errors("close"):
            if connection.is_open:
                connection.close()
    logger.info(
        "replayed %d message(s) from %r, left %d",
        result.total_moved,
        topology.quarantine_queue,
        result.skipped,
    )
    return result


def _restored(
    properties: ContentProperties | pika.BasicProperties,
) -> pika.BasicProperties:
    notes = list(getattr(properties, "defects", ()))  # none from pika (the fallback)
    headers = copyable_headers(
        {
            k: v
            for k, v in (properties.headers or {}).items()
            if not k.startswith(QUARANTINE_HEADER_PREFIX) and k not in _BROKER_HEADERS
        },
        notes,
    )
    if notes:
        logger.warning(
            "replaying message %s without what could not be carried: %s",
            properties.message_id,
            "; ".join(notes)[:1000],
            extra={"event": "replay_defects", "message_id": properties.message_id},
        )
    return copy_properties(properties, headers)
