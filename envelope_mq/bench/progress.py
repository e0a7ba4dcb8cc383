"""Progress bars on stderr, so that stdout carries only the results table.

On a terminal a bar redraws in place; elsewhere (CI logs, a pipe) each task
prints one line when it starts and one when it ends, never a flood.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self, TextIO

__all__ = ["Progress"]

_WIDTH = 24
_REDRAW_SECONDS = 0.1


class Progress:
    """One task's progress: ``with Progress(label, total) as bar: bar.advance()``."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self._label = label
        self._total = max(total, 1)
        self._done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._live = self._stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        if self._live:
            self._draw()
        else:
            self._stream.write(f"{self._label} ...\n")
            self._stream.flush()
        return self

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more units done; redraws at most ten times a second."""
        self._done = min(self._done + steps, self._total)
        if self._live:
            now = time.monotonic()
            if now - self._drawn >= _REDRAW_SECONDS or self._done == self._total:
                self._draw()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.monotonic() - self._started
        outcome = "failed" if exc_type is not None else f"done in {elapsed:.1f} s"
        if self._live:
            self._draw()
            self._stream.write(f" {outcome}\n")
        else:
            self._stream.write(f"{self._label}: {outcome}\n")
        self._stream.flush()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        filled = _WIDTH * self._done // self._total
        bar = "#" * filled + "-" * (_WIDTH - filled)
        self._stream.write(f"\r{self._label:<34} [{bar}] {self._done}/{self._total}")
        self._stream.flush()
