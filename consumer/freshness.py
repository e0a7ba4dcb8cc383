"""Replay protection: refuse stale messages, drop repeats within a bounded window.

Both checks look only at authenticated fields (the AMQP ``message_id`` and
``timestamp`` are bound into the GCM tag), so they run after the message was
opened: an attacker who replays a captured message cannot make it look fresh
or new without failing authentication first.

- ``max_age``: a message whose timestamp is more than ``max_age`` seconds old,
  or more than ``max_skew`` seconds (default 60) in the future, is quarantined
  with reason ``expired``: a timestamp far ahead would otherwise stay fresh
  for as long as its sender liked. Note that a message held back for long (a
  KMS outage, a stopped consumer) ages too.
- ``dedup_window``: the identities of the last N messages handled
  successfully are remembered; a message whose identity is among them is
  acknowledged without calling the handler again. The identity is (the master
  key KMS reported, the encryption context, the message_id), never the bare
  message_id: any sender can choose any message_id, so a bare id would let
  one sender make the consumer drop another's message as a "duplicate". The
  window is per consumer process and bounded, so this is exactly-once only
  within it: a restart, a second consumer or an id older than the window is
  delivered again.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

__all__ = ["DEFAULT_MAX_SKEW", "Admission", "ReplayGuard"]

# How far ahead of our clock a timestamp may be (hosts' clocks differ a little).
DEFAULT_MAX_SKEW = 60.0

# (verified master key id, context as sorted pairs, message_id)
_Identity = tuple[str, tuple[tuple[str, str], ...], str]


def _identity(key_id: str, context: Mapping[str, str], message_id: str) -> _Identity:
    return (key_id, tuple(sorted(context.items())), message_id)


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
        max_skew: float = DEFAULT_MAX_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age is not None and not max_age > 0:
            raise ValueError("max_age must be a positive number of seconds")
        if not max_skew >= 0:
            raise ValueError("max_skew cannot be negative")
        if dedup_window < 0:
            raise ValueError("dedup_window cannot be negative")
        self.max_age = max_age
        self.dedup_window = dedup_window
        self.max_skew = max_skew
        self._clock = clock  # wall clock: AMQP timestamps are epoch seconds
        self._seen: OrderedDict[_Identity, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any check is on."""
        return self.max_age is not None or self.dedup_window > 0

    def admit(
        self,
        key_id: str,
        context: Mapping[str, str],
        message_id: str,
        timestamp: int,
    ) -> Admission:
        """Check an opened message: ``key_id`` as KMS reported it, the rest
        authenticated by the tag."""
        if self.max_age is not None:
            age = self._clock() - timestamp
            if age > self.max_age or -age > self.max_skew:
                return Admission.EXPIRED
        if self.dedup_window:
            seen = _identity(key_id, context, message_id)
            with self._lock:
                if seen in self._seen:
                    self._seen.move_to_end(seen)
                    return Admission.DUPLICATE
        return Admission.FRESH

    def handled(self, key_id: str, context: Mapping[str, str], message_id: str) -> None:
        """Remember that this message (by its verified identity) was handled."""
        if not self.dedup_window:
            return
        seen = _identity(key_id, context, message_id)
        with self._lock:
            self._seen[seen] = None
            self._seen.move_to_end(seen)
            while len(self._seen) > self.dedup_window:
                self._seen.popitem(last=False)

    def __repr__(self) -> str:
        return (
            f"ReplayGuard(max_age={self.max_age}, dedup_window={self.dedup_window}, "
            f"max_skew={self.max_skew})"
        )
