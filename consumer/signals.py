"""Graceful shutdown on SIGTERM and SIGINT for the consumer's command line."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["stop_on_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop()`` on the first SIGTERM or SIGINT inside the block.

    The first signal asks for a graceful stop; the previous handlers are then
    restored, so a second Ctrl-C interrupts at once. Outside the main thread
    (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        restore()
        stop()

    for sig in _SIGNALS:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        restore()
