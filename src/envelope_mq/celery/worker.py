"""The worker's gate: every task message is opened before Celery sees it.

Celery's own answer to a body it cannot decode is to log it and acknowledge
it (the message is gone), and protocol 2 defers decoding to the pool. So the
worker's consumer class (``worker_consumer``, set by ``setup``) wraps the
task handler: each delivery is opened here, under the allowed-context and
allowed-key policies and bound to its ``id`` and ``task`` headers, and ends
as our consumer's deliveries do (consumer/outcome.py):

- opened: handed to Celery with the payload already decoded;
- cannot be opened (malformed, tampered, foreign key, denied, not sealed,
  sealed for another task): copied to ``<queue>.quarantine`` with the
  ``x-emq-quarantine-*`` headers on a confirmed channel, then acknowledged;
  never run, never redelivered;
- KMS unavailable, or refusing this worker's own credentials: held, then
  requeued after a growing backoff (the consumer thread waits, so no hot
  loop), never quarantined.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery.worker.consumer import Consumer
from kombu import Queue

from envelope_mq.celery.codec import (
    CONTENT_TYPE,
    TASK_TYPE_PREFIX,
    EnvelopeCodec,
)
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.outcome import Outcome, Reason, Verdict
from envelope_mq.consumer.transport import quarantine_headers
from envelope_mq.shared.amqp import QUARANTINE_SUFFIX
from envelope_mq.shared.errors import DecryptionError

__all__ = ["EnvelopeConsumer", "judge"]

logger = logging.getLogger(__name__)

_NOT_SEALED = Outcome(Verdict.QUARANTINE, Reason.MALFORMED, detail="not sealed")
_WRONG_TASK = Outcome(
    Verdict.QUARANTINE, Reason.MALFORMED, detail="sealed for another task message"
)


def judge(
    codec: EnvelopeCodec,
    content_type: str | None,
    headers: Mapping[str, Any],
    body: bytes,
) -> tuple[Outcome | None, object]:
    """How a task message ends: (None, payload) to run it, or (outcome, None)."""
    if content_type != CONTENT_TYPE:
        return _NOT_SEALED, None
    admitted = codec.admit(body)
    if isinstance(admitted, Outcome):
        return admitted, None
    if not _bound_to(admitted, headers):
        return _WRONG_TASK, None
    try:
        return None, codec.payload(admitted)
    except DecryptionError:
        return _NOT_SEALED, None


def _bound_to(opened: ReceivedMessage, headers: Mapping[str, Any]) -> bool:
    task, task_id = headers.get("task"), headers.get("id")
    return (
        isinstance(task, str)
        and opened.message_id == task_id
        and opened.properties.type == TASK_TYPE_PREFIX + task
    )


class EnvelopeConsumer(Consumer):  # type: ignore[misc]
    """Celery's worker consumer with the envelope gate in front of every task."""

    #: set by ``setup`` (a class attribute: Celery builds the consumer itself)
    codec: EnvelopeCodec | None = None
    quarantine_arguments: Mapping[str, Any] = {}
    kms_backoff = Backoff(initial=0.5, cap=10.0)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's handler, behind the gate."""
        handler = super().create_task_handler(*args, **kwargs)
        codec = self.codec
        if codec is None:
            raise RuntimeError("envelope_mq.celery.setup() was not called")
        delays: list[Iterator[float]] = []

        def gate(message: Any) -> Any:
            headers = message.headers if isinstance(message.headers, Mapping) else {}
            body = message.body
            if isinstance(body, str):  # kombu hands text content types as str
                body = body.encode("utf-8", "surrogateescape")
            outcome, payload = judge(codec, message.content_type, headers, bytes(body))
            if outcome is None:
                delays.clear()
                # Celery decodes message.payload next: hand it what we opened.
                message._decoded_cache = payload
                return handler(message)
            if outcome.verdict is Verdict.QUARANTINE:
                delays.clear()
                self._quarantine(message, outcome)
                return None
            if not delays:
                delays.append(self.kms_backoff.delays())
            self._hold(message, outcome, next(delays[0]))
            return None

        return gate

    def _quarantine(self, message: Any, outcome: Outcome) -> None:
        routing_key = (message.delivery_info or {}).get("routing_key") or "celery"
        queue = str(routing_key)
        target = queue + QUARANTINE_SUFFIX
        properties = message.properties or {}
        headers = quarantine_headers(message.headers or {}, outcome, queue, time.time())
        # A connection of its own: waiting for the confirm on the consumer's
        # connection would deliver the next task message into this one.
        connection = self.app.connection_for_write()
        try:
            channel = connection.channel()
            Queue(
                target,
                durable=True,
                auto_delete=False,
                queue_arguments=dict(self.quarantine_arguments) or None,
            )(channel).declare()
            body = message.body
            copy = channel.prepare_message(
                body.encode("utf-8", "surrogateescape")
                if isinstance(body, str)
                else body,
                properties.get("priority"),
                message.content_type,
                message.content_encoding,
                headers,
                {
                    "delivery_mode": 2,
                    "correlation_id": properties.get("correlation_id"),
                    "reply_to": properties.get("reply_to"),
                },
            )
            # A confirmed publish: the copy is in the quarantine before the
            # original is acknowledged, so nothing is lost in between.
            channel.basic_publish_confirm(copy, exchange="", routing_key=target)
        finally:
            connection.close()
        message.ack()
        logger.warning(
            "task message %s quarantined to %s: %s",
            headers.get("id", "?"),
            target,
            outcome.reason,
            extra={"event": "celery_quarantined", "reason": str(outcome.reason)},
        )

    def _hold(self, message: Any, outcome: Outcome, delay: float) -> None:
        if outcome.verdict is Verdict.HALT:
            logger.error(
                "KMS refuses this worker (%s): %s; holding task messages",
                outcome.kms_code,
                outcome.cause,
                extra={"event": "celery_kms_halt", "kms_code": outcome.kms_code},
            )
        else:
            logger.warning(
                "KMS unavailable; task message held, retried in %.1f s",
                delay,
                extra={"event": "celery_kms_hold"},
            )
        time.sleep(delay)
        message.reject(requeue=True)
