"""Replay protection: refuse stale messages, drop repeats within a bounded window.

Both checks look only at authenticated fields (the AMQP ``message_id`` and
``timestamp`` are bound into the GCM tag), so they run after the message was
opened: an attacker who replays a captured message cannot make it look fresh
or new without failing authentication first.

- ``max_age``: a message whose timestamp is more than ``max_age`` seconds old
  is quarantined with reason ``expired``. Note that a message held back for
  long (a KMS outage, a stopped consumer) ages too.
- ``dedup_window``: the message_ids of the last N messages handled
  successfully are remembered; a message whose id is among them is
  acknowledged without calling the handler again. The window is per consumer
  process and bounded, so this is exactly-once only within it: a restart, a
  second consumer or an id older than the window is delivered again.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Admission", "ReplayGuard"]


class Admission(enum.Enum):
    """What the guard says of one opened message."""

    FRESH = "fresh"  # hand it to the handler
    EXPIRED = "expired"  # older than max_age: quarantine it
    DUPLICATE = "duplicate"  # handled already within the window: drop it


class ReplayGuard:
    """The replay checks of one consumer (thread-safe)."""

    def __init__(
        self,
        *,
        max_age: float | None = None,
        dedup_window: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age is not None and not max_age > 0:
            raise ValueError("max_age must be a positive number of seconds")
        if dedup_window < 0:
            raise ValueError("dedup_window cannot be negative")
        self.max_age = max_age
        self.dedup_window = dedup_window
        self._clock = clock  # wall clock: AMQP timestamps are epoch seconds
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any check is on."""
        return self.max_age is not None or self.dedup_window > 0

    def admit(self, message_id: str, timestamp: int) -> Admission:
        """Check an opened message's authenticated id and timestamp."""
        if self.max_age is not None and self._clock() - timestamp > self.max_age:
            return Admission.EXPIRED
        if self.dedup_window:
            with self._lock:
                if message_id in self._seen:
                    self._seen.move_to_end(message_id)
                    return Admission.DUPLICATE
        return Admission.FRESH

    def handled(self, message_id: str) -> None:
        """Remember that ``message_id`` was handled successfully."""
        if not self.dedup_window:
            return
        with self._lock:
            self._seen[message_id] = None
            self._seen.move_to_end(message_id)
            while len(self._seen) > self.dedup_window:
                self._seen.popitem(last=False)

    def __repr__(self) -> str:
        return f"ReplayGuard(max_age={self.max_age}, dedup_window={self.dedup_window})"
