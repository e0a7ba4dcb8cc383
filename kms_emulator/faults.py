"""Fault injection: added latency, throttling, 503s and full outages on purpose.

Other components' reliability tests break KMS through these knobs (from the
``Emulator`` object or ``POST /admin/faults``) instead of touching the network.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

__all__ = ["FaultSettings", "Faults", "Outcome"]


class Outcome(enum.Enum):
    """What the fault layer decided for one API request."""

    SERVE = "serve"  # answer normally (possibly after a delay)
    THROTTLE = "throttle"  # 429 Rejected.Throttling, the gateways' quota answer
    UNAVAILABLE = "unavailable"  # HTTP 503 ServiceUnavailable
    OUTAGE = "outage"  # no answer at all: the connection is reset


@dataclass(frozen=True)
class FaultSettings:
    """The active faults; the zero value means none."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    throttle_ratio: float = 0.0
    error_ratio: float = 0.0
    outage_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "outage_seconds"):
            value = getattr(self, name)
            if not 0.0 <= value <= 3600_000.0:
                raise ValueError(f"{name} must be between 0 and 3600000, not {value}")
        for name in ("throttle_ratio", "error_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.throttle_ratio + self.error_ratio > 1.0:
            raise ValueError("throttle_ratio + error_ratio must not exceed 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> FaultSettings:
        """Settings from a JSON object; unknown fields or non-numbers are ValueError."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values: dict[str, float] = {}
        for name, value in data.items():
            # bool is an int subclass; "true" as a latency is a caller bug.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            values[name] = float(value)
        return cls(**values)


class Faults:
    """The emulator's fault switchboard; thread-safe, shared by every request."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._outage_until = 0.0

    def set(
        self,
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        throttle_ratio: float = 0.0,
        error_ratio: float = 0.0,
        outage_seconds: float = 0.0,
    ) -> None:
        """Replace every fault with these (an outage starts now)."""
        self.apply(
            FaultSettings(
                latency_ms=latency_ms,
                jitter_ms=jitter_ms,
                throttle_ratio=throttle_ratio,
                error_ratio=error_ratio,
                outage_seconds=outage_seconds,
            )
        )

    def apply(self, settings: FaultSettings) -> None:
        """Replace every fault with ``settings``."""
        with self._lock:
            self._settings = settings
            self._outage_until = (
                self._clock() + settings.outage_seconds
                if settings.outage_seconds
                else 0.0
            )

    def clear(self) -> None:
        """Remove every fault, ending any outage."""
        self.apply(FaultSettings())

    @property
    def settings(self) -> FaultSettings:
        """The faults last set."""
        with self._lock:
            return self._settings

    def snapshot(self) -> dict[str, float]:
        """The settings plus the seconds of outage left, for the admin endpoint."""
        with self._lock:
            left = max(0.0, self._outage_until - self._clock())
            return {**asdict(self._settings), "outage_remaining_seconds": left}

    def in_outage(self) -> bool:
        """True while a full outage is running."""
        with self._lock:
            return self._clock() < self._outage_until

    def decide(self) -> tuple[float, Outcome]:
        """Draw this request's fate: seconds to delay it, and how to answer."""
        with self._lock:
            if self._clock() < self._outage_until:
                return 0.0, Outcome.OUTAGE
            s = self._settings
            delay = s.latency_ms
            if s.jitter_ms:
                delay += self._rng.uniform(-s.jitter_ms, s.jitter_ms)
            draw = self._rng.random() if s.throttle_ratio or s.error_ratio else 1.0
        outcome = Outcome.SERVE
        if draw < s.throttle_ratio:
            outcome = Outcome.THROTTLE
        elif draw < s.throttle_ratio + s.error_ratio:
            outcome = Outcome.UNAVAILABLE
        return max(0.0, delay) / 1000.0, outcome
