"""Publisher-confirm bookkeeping: which delivery tag is which message, and its fate.

No I/O here: the transport's I/O thread records each message as it publishes
it, and reports the broker's ``basic.ack`` / ``basic.nack`` / ``basic.return``;
the tracker resolves or fails each message's Future and gives its slot in the
in-flight window back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future

from envelope_mq.producer.failures import FailureLedger, PublishHandle, cause_of
from envelope_mq.producer.window import InFlightWindow
from envelope_mq.shared.errors import (
    BrokerError,
    MessageNackedError,
    MessageUnroutableError,
    PublishNotConfirmedError,
)
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks

__all__ = ["ConfirmTracker", "Outgoing"]


class Outgoing:
    """One message on its way: payloads ready to frame, and its Future."""

    __slots__ = (
        "body",
        "exchange",
        "future",
        "header",
        "message_id",
        "method",
        "routing_key",
        "sent",
    )

    def __init__(
        self,
        destination: tuple[str, str, bytes],
        header: bytes,
        body: bytes,
        message_id: str,
    ) -> None:
        # (exchange, routing key, basic.publish payload)
        self.exchange, self.routing_key, self.method = destination
        self.header = header  # content header payload (properties)
        self.body = body
        self.message_id = message_id
        self.future: Future[str] = PublishHandle()
        self.sent = 0  # times published; more than once after a reconnect


class ConfirmTracker:
    """Delivery tags of one confirm-mode channel at a time (I/O thread only)."""

    def __init__(
        self, window: InFlightWindow, metrics: MetricsHooks = NULL_METRICS
    ) -> None:
        self._window = window
        self._metrics = metrics
        self._pending: OrderedDict[int, Outgoing] = OrderedDict()
        self._returned: set[bytes] = set()
        self._next_tag = 1
        self.published = self.republished = self.confirmed = self.failed = 0
        self.failures = FailureLedger()

    def __len__(self) -> int:
        return len(self._pending)

    def new_channel(self) -> None:
        """Delivery tags start again at 1 on every channel."""
        self._next_tag = 1

    def record(self, out: Outgoing) -> None:
        """``out`` was just published on the current channel."""
        self._pending[self._next_tag] = out
        self._next_tag += 1
        self.published += 1
        if out.sent:
            self.republished += 1
            self._metrics.republished(1)
        out.sent += 1

    def returned(self, body: bytes) -> None:
        """The broker returned this body as unroutable; its ack follows."""
        # Bodies carry a random nonce, so the body names exactly one message.
        self._returned.add(body)

    def settle(self, tag: int, multiple: bool, acked: bool) -> None:
        """Apply a ``basic.ack`` (``acked``) or ``basic.nack`` to its message(s)."""
        pending = self._pending
        settled: list[Outgoing] = []
        if multiple:
            while pending and next(iter(pending)) <= tag:
                settled.append(pending.popitem(last=False)[1])
        elif (one := pending.pop(tag, None)) is not None:
            settled.append(one)
        confirmed = self.confirmed
        for out in settled:
            self._settle(out, acked)
        self._window.release(len(settled))
        # Once per ack frame (which usually covers many messages), not per message.
        if acked:
            if self.confirmed > confirmed:
                self._metrics.confirmed(self.confirmed - confirmed)
        elif settled:
            self._metrics.nacked(len(settled))

    def _settle(self, out: Outgoing, acked: bool) -> None:
        if acked and not (self._returned and out.body in self._returned):
            self.confirmed += 1
            out.future.set_result(out.message_id)
            return
        error: PublishNotConfirmedError
        if acked:
            self._returned.discard(out.body)
            self._metrics.returned()
            error = MessageUnroutableError(
                f"message {out.message_id} matched no queue (exchange "
                f"{out.exchange!r}, routing key {out.routing_key!r})",
                message_id=out.message_id,
            )
        else:
            error = MessageNackedError(
                f"the broker nacked message {out.message_id}",
                message_id=out.message_id,
            )
        self.failed += 1
        self._fail_one(out, error)

    def _fail_one(self, out: Outgoing, error: BrokerError) -> None:
        self.failures.failed(
            out.future, error, cause_of(error, out.exchange, out.routing_key)
        )
        out.future.set_exception(error)

    def take_unconfirmed(self) -> list[Outgoing]:
        """Remove and return every unconfirmed message, oldest first (to resend)."""
        taken = list(self._pending.values())
        self._pending.clear()
        self._returned.clear()
        return taken

    def fail_unconfirmed(self, error: BrokerError) -> int:
        """Fail every unconfirmed message with ``error``; return how many."""
        return self.fail(self.take_unconfirmed(), error)

    def fail(self, outs: Iterable[Outgoing], error: BrokerError) -> int:
        """Fail ``outs`` (each with its own copy of ``error``); return how many."""
        count = 0
        for out in outs:
            failure = type(error)(str(error))
            failure.__cause__ = error.__cause__
            if isinstance(failure, PublishNotConfirmedError):
                failure.message_id = out.message_id
            self._fail_one(out, failure)
            count += 1
        self.failed += count
        self._window.release(count)
        if count:
            self._metrics.publish_failed(count)
        return count
