"""The toxics: what can go wrong on a link, as plain values (Toxiproxy's names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Bandwidth",
    "Hold",
    "Installed",
    "Latency",
    "LimitData",
    "ResetPeer",
    "Slicer",
    "Stream",
    "Timeout",
    "Toxic",
]

Stream = Literal["upstream", "downstream"]


@dataclass(frozen=True)
class Latency:
    """Deliver each chunk ``latency_ms`` ± ``jitter_ms`` after it arrived, in order."""

    latency_ms: float
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency and jitter cannot be negative")


@dataclass(frozen=True)
class Bandwidth:
    """Deliver at most ``rate_kb`` kilobytes (of 1000 bytes) per second."""

    rate_kb: float

    def __post_init__(self) -> None:
        if self.rate_kb <= 0:
            raise ValueError("rate_kb must be positive")


@dataclass(frozen=True)
class Timeout:
    """Drop every byte; close the link after ``timeout_ms`` (0: never, a black hole)."""

    timeout_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.timeout_ms < 0:
            raise ValueError("timeout_ms cannot be negative")


@dataclass(frozen=True)
class Hold:
    """Keep every byte until the toxic is removed, then deliver them in order.

    Unlike ``Timeout(0)``, which drops what it swallows, held data is delivered
    once the toxic goes, on every link that is still open; links closed while
    held lose it with them. The pipe's buffer is bounded, so a long hold pushes
    back on the sender through TCP flow control.
    """


@dataclass(frozen=True)
class ResetPeer:
    """Reset the link with a TCP RST ``timeout_ms`` after it meets this toxic.

    With ``timeout_ms`` 0 a new connection is reset as soon as it is accepted,
    before the server is dialled: installed before clients connect, it turns
    them away the way a crashed broker behind a load balancer would.
    """

    timeout_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.timeout_ms < 0:
            raise ValueError("timeout_ms cannot be negative")


@dataclass(frozen=True)
class Slicer:
    """Write each chunk as slices of ``average_size`` ± ``size_variation`` bytes."""

    average_size: int
    size_variation: int = 0
    delay_us: int = 0

    def __post_init__(self) -> None:
        if self.average_size < 1 or not 0 <= self.size_variation < self.average_size:
            raise ValueError("need average_size >= 1 and 0 <= variation < average")
        if self.delay_us < 0:
            raise ValueError("delay_us cannot be negative")


@dataclass(frozen=True)
class LimitData:
    """Close the link once ``bytes`` bytes have passed in this direction."""

    bytes: int

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise ValueError("bytes cannot be negative")


Toxic = Latency | Bandwidth | Timeout | Hold | ResetPeer | Slicer | LimitData


@dataclass(frozen=True)
class Installed:
    """A toxic as installed on a proxy: its name, direction and probability."""

    name: str
    toxic: Toxic
    stream: Stream
    toxicity: float
