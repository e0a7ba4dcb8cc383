"""KMS off the event loop: a cache hit seals or opens in place, a miss in a thread.

The key caches are thread-safe and single flight; what an event loop must not
do is wait on them, for KMS or for another thread's KMS call. So every seal
and open is tried first against the cache alone (``acquire_cached``,
``unwrap_any_cached``: a hit or None, never a wait) and, on a miss, done again in a
small bounded thread pool, where the cache's single flight holds across tasks
and threads: a burst of tasks missing one key makes one KMS call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from envelope_mq.shared.envelope import (
    DataKeySource,
    KeyUnwrapper,
    MessageMeta,
    Opener,
    SealedMessage,
    Sealer,
)
from envelope_mq.shared.kms import DataKey, UnwrappedKey, WrappedCopy
from envelope_mq.shared.observability import MessageSealer, MetricsHooks

__all__ = [
    "AsyncSealer",
    "CachedDataKeySource",
    "CachedKeyUnwrapper",
    "KmsOffload",
    "NeedsKms",
    "loop_openers",
]

_T = TypeVar("_T")
# Threads for KMS calls: enough for a few keys missed at once; a KMS outage
# cannot take more threads than this.
DEFAULT_KMS_THREADS = 4


class NeedsKms(Exception):  # noqa: N818 - a signal between two of our modules
    """The cache alone could not answer: do it again in the thread pool."""


class CachedDataKeySource(DataKeySource, Protocol):
    """A data key source that can answer from its cache alone (DataKeyCache)."""

    def acquire_cached(self, key_id: str, context: Mapping[str, str]) -> DataKey | None:
        """The data key on a hit, None on a miss; never calls KMS."""
        ...


class CachedKeyUnwrapper(KeyUnwrapper, Protocol):
    """A key unwrapper that can answer from its cache alone (UnwrapCache)."""

    def unwrap_any_cached(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey] | None:
        """What ``unwrap_any`` would answer, on a hit; None otherwise, no KMS."""
        ...


class _CacheOnlyKeys:
    """A DataKeySource that raises NeedsKms instead of calling KMS."""

    def __init__(self, cache: CachedDataKeySource) -> None:
        self._cache = cache

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        key = self._cache.acquire_cached(key_id, context)
        if key is None:
            raise NeedsKms
        return key


class _CacheOnlyUnwrap:
    """A KeyUnwrapper that raises NeedsKms instead of calling KMS."""

    def __init__(self, cache: CachedKeyUnwrapper) -> None:
        self._cache = cache

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        found = self._cache.unwrap_any_cached(copies, context)
        if found is None:
            raise NeedsKms
        return found


class KmsOffload:
    """The bounded thread pool one publisher or consumer makes its KMS calls in."""

    def __init__(self, threads: int = DEFAULT_KMS_THREADS) -> None:
        if threads < 1:
            raise ValueError("need at least one KMS thread")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="emq-kms")

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in the pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Stop the threads once their calls return (never waits here)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class AsyncSealer:
    """Seals on the event loop on a cache hit, in the pool on a miss."""

    def __init__(
        self,
        cache: CachedDataKeySource,
        key_id: str,
        context: Mapping[str, str] | None,
        offload: KmsOffload,
        metrics: MetricsHooks,
        sealer_class: type[Sealer] = Sealer,
        *,
        wire_version: int = 2,
    ) -> None:
        self._fast: MessageSealer = metrics.time_sealer(
            sealer_class(
                _CacheOnlyKeys(cache), key_id, context, wire_version=wire_version
            )
        )
        self._slow: MessageSealer = metrics.time_sealer(
            sealer_class(cache, key_id, context, wire_version=wire_version)
        )
        self._offload = offload

    async def seal(self, plaintext: bytes, meta: MessageMeta) -> SealedMessage:
        """Seal ``plaintext``; raises what ``Sealer.seal`` raises."""
        try:
            return self._fast.seal(plaintext, meta)
        except NeedsKms:
            pass
        return await self._offload.run(
            functools.partial(self._slow.seal, plaintext, meta)
        )


def loop_openers(cache: CachedKeyUnwrapper) -> tuple[Opener, Opener]:
    """Two openers over ``cache``: for the loop (raises NeedsKms), for the pool."""
    return Opener(_CacheOnlyUnwrap(cache)), Opener(cache)
