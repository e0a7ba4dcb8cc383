"""The bounded in-flight window: backpressure for the pipelined publisher."""

from __future__ import annotations

import threading
import time

__all__ = ["InFlightWindow"]


class InFlightWindow:
    """Counts messages handed over but not yet settled (confirmed or failed).

    :meth:`acquire` blocks while ``limit`` messages are in flight, so a fast
    producer cannot grow memory without bound while the broker lags;
    :meth:`wait_empty` is what ``flush()`` waits on. Releases come in batches
    (one per ``multiple=True`` confirm), and waiters are only woken when some
    exist, which keeps the per-message cost to one uncontended lock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self._limit = limit
        self._count = 0
        self._waiters = 0
        self._cond = threading.Condition(threading.Lock())

    @property
    def count(self) -> int:
        """Messages currently in flight."""
        return self._count

    def acquire(self, timeout: float | None = None) -> bool:
        """Take one slot, waiting while the window is full; False on timeout."""
        with self._cond:
            if self._count < self._limit:
                self._count += 1
                return True
            deadline = None if timeout is None else time.monotonic() + timeout
            self._waiters += 1
            try:
                while self._count >= self._limit:
                    remaining = (
                        None if deadline is None else deadline - time.monotonic()
                    )
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                self._count += 1
                return True
            finally:
                self._waiters -= 1

    def release(self, n: int = 1) -> None:
        """Give back ``n`` slots (messages settled)."""
        if n <= 0:
            return
        with self._cond:
            self._count -= n
            if self._waiters:
                self._cond.notify_all()

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        with self._cond:
            self._waiters += 1
            try:
                return self._cond.wait_for(lambda: self._count == 0, timeout)
            finally:
                self._waiters -= 1
