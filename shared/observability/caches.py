"""Key-cache metrics read from the caches' own counters when Prometheus scrapes.

The caches already count hits, misses, evictions and rotations under their own
lock; reading ``stats()`` at scrape time costs the hot path nothing at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from envelope_mq.shared.keycache import DataKeyCacheStats, UnwrapCacheStats
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DATA_KEY_CACHE", "UNWRAP_CACHE", "CacheCollector", "WatchedCache"]

# The ``cache`` label: the producer's data key cache, the consumer's unwrap cache.
DATA_KEY_CACHE = "data_key"
UNWRAP_CACHE = "unwrap"

_PREFIX = "envelope_mq_key_cache"


class WatchedCache(Protocol):
    """A DataKeyCache or an UnwrapCache."""

    def stats(self) -> DataKeyCacheStats | UnwrapCacheStats:
        """A snapshot of the counters."""
        ...

    def __len__(self) -> int: ...


class CacheCollector(Collector):
    """Hits, misses, evictions, rotations and size of every watched cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: list[WatchedCache] = []

    def watch(self, cache: WatchedCache) -> None:
        """Include ``cache`` from the next scrape on (once, however often called).

        The cache is held until the collector goes: its counts must never
        vanish from a counter that Prometheus expects to only go up.
        """
        with self._lock:
            if all(c is not cache for c in self._caches):
                self._caches.append(cache)

    def describe(self) -> Iterator[Metric]:
        """The families, without reading any cache."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        """The families, summed per cache kind, read now."""
        hits, misses, evictions, negative, rotations, entries = self._families()
        totals: dict[str, list[int]] = {}
        with self._lock:
            caches = list(self._caches)
        for cache in caches:
            stats = cache.stats()
            kind = (
                DATA_KEY_CACHE
                if isinstance(stats, DataKeyCacheStats)
                else (UNWRAP_CACHE)
            )
            row = totals.setdefault(kind, [0, 0, 0, 0, 0, 0])
            row[0] += stats.hits
            row[1] += stats.misses
            row[5] += len(cache)
            if isinstance(stats, DataKeyCacheStats):
                row[4] += stats.rotations
            else:
                row[2] += stats.evictions
                row[3] += stats.negative_hits
        for kind, row in sorted(totals.items()):
            hits.add_metric([kind], row[0])
            misses.add_metric([kind], row[1])
            entries.add_metric([kind], row[5])
            if kind == UNWRAP_CACHE:
                evictions.add_metric([kind], row[2])
                negative.add_metric([kind], row[3])
            else:
                rotations.add_metric([], row[4])
        return iter((hits, misses, evictions, negative, rotations, entries))

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
    ]:
        label = ["cache"]
        return (
            CounterMetricFamily(
                f"{_PREFIX}_hits", "Key lookups answered from the cache.", labels=label
            ),
            CounterMetricFamily(
                f"{_PREFIX}_misses",
                "Key lookups the cache could not answer (a KMS call, or a wait "
                "for another thread's).",
                labels=label,
            ),
            CounterMetricFamily(
                f"{_PREFIX}_evictions",
                "Unwrapped keys dropped because the cache was full (LRU).",
                labels=label,
            ),
            CounterMetricFamily(
                f"{_PREFIX}_negative_hits",
                "Lookups refused from the cache of recent KMS refusals.",
                labels=label,
            ),
            CounterMetricFamily(
                "envelope_mq_data_key_rotations",
                "Data keys replaced after reaching their age or message limit.",
                labels=[],
            ),
            GaugeMetricFamily(
                f"{_PREFIX}_entries", "Keys held in the cache now.", labels=label
            ),
        )
