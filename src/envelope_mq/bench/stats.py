"""The benchmark's statistics: medians, ratios, percentiles. Pure functions.

Throughput figures are compared round by round: in round ``i`` both sides ran
back to back on the same machine, so their ratio cancels most of the noise of
a shared machine, and the median of the per-round ratios is what a target is
checked against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "median",
    "percentile",
    "rate",
    "ratio",
    "round_ratios",
]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (the mean of the two middle ones for an even count).

    Raises:
        ValueError: ``values`` is empty or holds a NaN.
    """
    ordered = _sorted_finite(values)
    n = len(ordered)
    middle = n // 2
    if n % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` by the nearest-rank method.

    The smallest value such that at least ``p`` % of all values are at or
    below it: always one of the measured values, never an interpolation, so
    a p99 of 100 samples is the 99th smallest.

    Raises:
        ValueError: ``values`` is empty, holds a NaN, or ``p`` is not in (0, 100].
    """
    if not 0 < p <= 100:
        raise ValueError("a percentile is in (0, 100]")
    ordered = _sorted_finite(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[rank - 1]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; ValueError unless the denominator is > 0."""
    if not denominator > 0:
        raise ValueError("a ratio needs a positive denominator")
    return numerator / denominator


def round_ratios(
    numerators: Sequence[float], denominators: Sequence[float]
) -> list[float]:
    """The ratio of each round: ``numerators[i] / denominators[i]``.

    Raises:
        ValueError: the two sides ran a different number of rounds, or none.
    """
    if len(numerators) != len(denominators):
        raise ValueError("both sides must have run the same rounds")
    if not numerators:
        raise ValueError("no rounds")
    return [ratio(a, b) for a, b in zip(numerators, denominators, strict=True)]


def rate(count: int, seconds: float) -> float:
    """Events per second; raises ValueError when ``seconds`` is not > 0."""
    if not seconds > 0:
        raise ValueError("a rate needs a positive duration")
    return count / seconds


def _sorted_finite(values: Sequence[float]) -> list[float]:
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if any(math.isnan(v) for v in ordered):
        raise ValueError("NaN among the values")
    return ordered
