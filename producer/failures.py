"""Failed publishes are never silent: logged once per cause, counted, and reported.

Every message's Future is a :class:`PublishHandle`, which notes when the caller
looks at it (``result()``, ``exception()`` or ``add_done_callback()``). When a
publish fails, the :class:`FailureLedger` logs the first failure of each cause
at WARNING, counts every one, and remembers those whose handle nobody has
looked at yet; the publisher's ``flush()`` and ``close()`` raise for those.
A caller that looks at its handles — ``send()``, a done-callback, ``result()``
after ``flush()`` in a ``try`` — handles failures itself and is never surprised.
No I/O here, and no message content: a cause names the exchange and routing
key, or the broker's refusal.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

from envelope_mq.shared.errors import (
    MessageNackedError,
    MessageUnroutableError,
    PublishNotConfirmedError,
)

__all__ = ["FailureLedger", "PublishHandle", "cause_of", "unseen_failures_error"]

_log = logging.getLogger("envelope_mq.producer.publisher")

# One lock for every handle's first look and every failure's booking: both are
# rare next to a publish (a handle is looked at once), and a per-handle lock
# would cost a lock object per message.
_LOCK = threading.Lock()


class PublishHandle(Future[str]):
    """The Future of one publish; resolves to its message_id on the broker's ack."""

    _seen = False
    # Set when it failed unseen: the ledger to settle with when looked at later.
    _booked: tuple[FailureLedger, str, int] | None = None

    def result(self, timeout: float | None = None) -> str:
        self._look()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._look()
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Future[str]], object]) -> None:
        self._look()
        super().add_done_callback(fn)

    def _look(self) -> None:
        if self._seen:
            return
        with _LOCK:
            self._seen = True
            booked, self._booked = self._booked, None
            if booked is not None:
                booked[0]._seen_late(booked[1], booked[2])


class FailureLedger:
    """Failures of one publisher, by cause."""

    def __init__(self) -> None:
        self.by_cause: Counter[str] = Counter()  # every failure, since the start
        self._unseen: Counter[str] = Counter()  # failed, handle not looked at
        self._round = 0  # bumped by each report: later looks don't count twice

    def failed(self, future: Future[str], error: BaseException, cause: str) -> None:
        """Book one failed publish (call it just before failing ``future``)."""
        with _LOCK:
            first = cause not in self.by_cause
            self.by_cause[cause] += 1
            if isinstance(future, PublishHandle) and not future._seen:
                future._booked = (self, cause, self._round)
                self._unseen[cause] += 1
        if first:
            _log.warning(
                "publish failed: %s (%s); further failures of this cause are "
                "counted, not logged",
                cause,
                type(error).__name__,
                extra={"event": "publish_failed", "reason": cause},
            )

    def _seen_late(self, cause: str, booked_round: int) -> None:
        # Under _LOCK, from PublishHandle._look.
        if booked_round == self._round and self._unseen[cause] > 0:
            self._unseen[cause] -= 1

    def take_unseen(self) -> Counter[str]:
        """The failures nobody looked at, by cause; each is reported once."""
        with _LOCK:
            unseen = +self._unseen  # drops zero counts
            self._unseen.clear()
            self._round += 1
        return unseen


def cause_of(error: BaseException, exchange: str, routing_key: str) -> str:
    """The cause a failure is logged and counted under; never message content."""
    if isinstance(error, MessageUnroutableError):
        return f"matched no queue (exchange {exchange!r}, routing key {routing_key!r})"
    if isinstance(error, MessageNackedError):
        return "nacked by the broker"
    return str(error)


def unseen_failures_error(unseen: Counter[str]) -> PublishNotConfirmedError:
    """The error flush() and close() raise for failures nobody looked at."""
    total = unseen.total()
    causes = "; ".join(f"{n} x {cause}" for cause, n in unseen.most_common())
    return PublishNotConfirmedError(
        f"{total} published message(s) failed and their Futures were never "
        f"looked at: {causes}. Check each publish()'s Future, or use send()"
    )
