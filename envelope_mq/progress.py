"""A one-line progress bar on stderr, shown only for runs longer than a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 30
_REFRESH_SECONDS = 0.1
_SHOW_AFTER_SECONDS = 1.0


class Progress:
    """Counts up to ``total``; draws itself once the task has run for a second.

    Drawing needs a terminal: on a pipe or file nothing is written, so logs and
    captured output stay clean. Call :meth:`advance` per item (cheap: a clock
    read and a comparison) and :meth:`close` at the end.
    """

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
    ) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._next_draw = self._start + _SHOW_AFTER_SECONDS
        self._drawn = False
        self.done = 0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if self._enabled:
            now = time.monotonic()
            if now >= self._next_draw:
                self._next_draw = now + _REFRESH_SECONDS
                self._draw(now)

    def close(self) -> None:
        """Draw the final state (if the bar was ever shown) and end the line."""
        if self._drawn:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        share = min(self.done / self._total, 1.0)
        filled = int(share * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        self._stream.write(
            f"\r{self._label:<8} [{bar}] {self.done:,}/{self._total:,} "
            f"{now - self._start:5.1f}s"
        )
        self._stream.flush()
        self._drawn = True
