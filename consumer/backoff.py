"""Exponential backoff with a cap and jitter, for KMS holds and reconnects."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial``, ``initial*factor``, ... capped at ``cap`` seconds.

    Each delay is drawn from [delay*(1-jitter), delay], so that many consumers
    held by one KMS outage do not all retry in the same instant.
    """

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delays(self) -> Iterator[float]:
        """An endless series of delays in seconds."""
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * random.random())
            delay = min(delay * self.factor, self.cap)
