"""A one-line progress bar on stderr, so that stdout carries only results.

On a terminal the bar redraws in place. Off a terminal (a pipe, CI logs) it
writes nothing, or, with ``announce=True``, one line when the task starts and
one when it ends, never a flood. The demo uses the quiet form and shows the bar
only for runs longer than a second; the benchmarks announce every task.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self, TextIO

__all__ = ["Progress"]

_WIDTH = 30
_REFRESH_SECONDS = 0.1


class Progress:
    """Counts up to ``total``: ``with Progress(label, total) as bar: bar.advance()``.

    ``show_after`` holds the bar back until the task has run that many seconds
    (short runs stay silent); ``announce`` adds the start line and the
    "done in N s" / "failed" outcome, on a terminal and off it. :meth:`advance`
    is cheap (a clock read and a comparison); :meth:`close` ends the line when
    the bar is used without ``with``.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        show_after: float = 0.0,
        announce: bool = False,
    ) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream if stream is not None else sys.stderr
        self._live = self._stream.isatty() if enabled is None else enabled
        self._show_after = show_after
        self._announce = announce
        self._start = time.monotonic()
        self._next_draw = self._start + show_after
        self._drawn = False
        self.done = 0

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        self._next_draw = self._start + self._show_after
        if self._live and self._show_after <= 0:
            self._draw(self._start)
        elif self._announce and not self._live:
            self._stream.write(f"{self._label} ...\n")
            self._stream.flush()
        return self

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if self._live:
            now = time.monotonic()
            if now >= self._next_draw:
                self._next_draw = now + _REFRESH_SECONDS
                self._draw(now)

    def close(self, *, failed: bool = False) -> None:
        """Draw the final state (if the bar was ever shown) and end the line."""
        now = time.monotonic()
        outcome = "failed" if failed else f"done in {now - self._start:.1f} s"
        if self._live and (self._drawn or self._announce):
            self._draw(now)
            self._stream.write(f" {outcome}\n" if self._announce else "\n")
        elif self._announce:
            self._stream.write(f"{self._label}: {outcome}\n")
        else:
            return
        self._stream.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)

    def _draw(self, now: float) -> None:
        share = min(self.done / self._total, 1.0)
        filled = int(share * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        done = min(self.done, self._total)
        self._stream.write(
            f"\r{self._label:<8} [{bar}] {done:,}/{self._total:,} "
            f"{now - self._start:5.1f}s"
        )
        self._stream.flush()
        self._drawn = True
