"""The two key caches that keep KMS off the per-message path.

:class:`DataKeyCache` (producer side) reuses one data key per (master key,
context) until its age or message limit; :class:`UnwrapCache` (consumer side)
remembers unwrapped data keys. Both are thread-safe and "single flight": when
many threads miss on the same key at once, one of them calls KMS and the others
wait for its answer, so a burst of messages never becomes a burst of KMS calls.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from envelope_mq.shared.config import MAX_DATA_KEY_MESSAGES
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsError,
    KmsRequestError,
)
from envelope_mq.shared.kms import (
    DataKey,
    KeyProvider,
    UnwrappedKey,
    WrappedCopy,
    local_copy,
    replay_error,
)

__all__ = [
    "DataKeyCache",
    "DataKeyCacheStats",
    "DataKeyLookup",
    "UnwrapCache",
    "UnwrapCacheStats",
    "UnwrapLookup",
]

Clock = Callable[[], float]
_T = TypeVar("_T")
# (master key id or wrapped key, the context as sorted pairs)
_CacheKey = tuple[str, tuple[tuple[str, str], ...]]


def _cache_key(first: str, context: Mapping[str, str]) -> _CacheKey:
    # Sorted pairs identify a context exactly as its canonical JSON does, and
    # are cheaper to build on every message than JSON (one pair needs no sort).
    pairs = tuple(context.items())
    return (first, pairs if len(pairs) < 2 else tuple(sorted(pairs)))


_Pairs = tuple[tuple[str, str], ...]
# Contexts whose pairs a cache remembers (see _ContextPairs): far more than a
# process seals or opens under at once.
_MAX_CONTEXTS = 256


class _ContextPairs:
    """The sorted pairs of the contexts a cache is asked about, by object.

    Building them (``_cache_key``) is a third of a cache hit, and the callers
    on the per-message path pass the same context object message after
    message (a Sealer's own, an EnvelopeHeader's). A context is remembered
    with a private copy of its items, and its pairs are reused only while it
    is the same object (the entry holds it, so its id is not reused) and
    still equal to that copy, which a mutated dict no longer is.
    """

    __slots__ = ("known",)

    def __init__(self) -> None:
        # id(context) -> (context, a copy of its items, its sorted pairs)
        self.known: dict[int, tuple[Mapping[str, str], dict[str, str], _Pairs]] = {}

    def remember(self, context: Mapping[str, str]) -> _Pairs:
        """The pairs of ``context``, remembered for the next lookup."""
        pairs = _cache_key("", context)[1]
        known = self.known
        if len(known) >= _MAX_CONTEXTS:
            known.clear()  # a caller with a new context per call: no use
        known[id(context)] = (context, dict(pairs), pairs)
        return pairs


@dataclass(frozen=True, slots=True)
class DataKeyLookup:
    """What :meth:`DataKeyCache.acquire_by` finds a data key by, built once.

    A sealer asks for the key of one (master key, context) message after
    message: this is that question with its cache key worked out, so a hit
    is a dict lookup. It holds a read-only copy of ``context``, so the key
    stays true to what it says; only its fields make it, never a key given.
    """

    key_id: str
    context: Mapping[str, str]
    key: _CacheKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        context = MappingProxyType(dict(self.context))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "key", _cache_key(self.key_id, context))


@dataclass(frozen=True, slots=True)
class UnwrapLookup:
    """What :meth:`UnwrapCache.unwrap_by` finds a data key by, built once.

    The wrapped copies and context of one received envelope header, with the
    copy an :class:`UnwrapCache` unwraps (:func:`local_copy`) and its cache
    key worked out: every message under that header then costs a dict
    lookup. Holds a read-only copy of ``context``, as DataKeyLookup does.

    Raises:
        ValueError: there is no copy at all.
    """

    copies: tuple[WrappedCopy, ...]
    context: Mapping[str, str]
    copy: WrappedCopy = field(init=False, repr=False, compare=False)
    key: _CacheKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        context = MappingProxyType(dict(self.context))
        copy = local_copy(self.copies)
        object.__setattr__(self, "copies", tuple(self.copies))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "copy", copy)
        object.__setattr__(self, "key", _cache_key(copy.blob, context))


def _wait(flight: Future[_T]) -> _T:
    """The leader's result, or a copy of its error (raised in this thread)."""
    error = flight.exception()  # blocks until the leader is done
    if isinstance(error, KmsError):
        raise replay_error(error) from error
    if error is not None:
        raise error
    return flight.result()


@dataclass(frozen=True)
class DataKeyCacheStats:
    """Counters of a :class:`DataKeyCache` since it was built."""

    hits: int
    misses: int
    generate_calls: int
    rotations: int


class _Lease:
    __slots__ = ("born", "data_key", "uses")

    def __init__(self, data_key: DataKey, born: float) -> None:
        self.data_key = data_key
        self.born = born
        self.uses = 0


class DataKeyCache:
    """One data key per (master key id, context), replaced by age or by count.

    Every :meth:`acquire` counts one message sealed under the returned key.
    ``max_messages`` may not exceed 2**32, the NIST SP 800-38D bound for
    AES-GCM with random 96-bit nonces. When a key is used up and KMS cannot
    give a new one, the KMS error propagates: nothing is ever sent unsealed.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        max_age: float = 300.0,
        max_messages: int = 2**24,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= max_messages <= MAX_DATA_KEY_MESSAGES:
            raise ConfigError(
                "max_messages must be between 1 and 2**32 "
                "(NIST SP 800-38D bound for random 96-bit nonces)"
            )
        if not max_age > 0:
            raise ConfigError("max_age must be positive")
        self._provider = provider
        self._max_age = max_age
        self._max_messages = max_messages
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[_CacheKey, _Lease] = {}
        self._contexts = _ContextPairs()
        self._flights: dict[_CacheKey, Future[None]] = {}
        self._last_sweep = clock()
        self._hits = self._misses = self._generate_calls = self._rotations = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """The data key to seal one message with, under ``key_id`` and ``context``.

        Raises:
            KmsUnavailableError, KmsRequestError: a new key was needed and KMS
                could not give one.
        """
        # Once per message sealed: the key from the context's remembered
        # pairs, _take inlined, and the lock taken by hand (a with statement
        # costs twice as much; try/finally is as safe).
        known = self._contexts.known.get(id(context))
        if known is not None and known[0] is context and context == known[1]:
            key = (key_id, known[2])
        else:
            key = (key_id, self._contexts.remember(context))
        lock = self._lock
        lock.acquire()
        try:
            lease = self._leases.get(key)
            if (
                lease is not None
                and lease.uses < self._max_messages
                and self._clock() - lease.born < self._max_age
            ):
                lease.uses += 1
                self._hits += 1
                return lease.data_key
            self._misses += 1
        finally:
            lock.release()
        return self._replace(key, key_id, context)

    def acquire_by(self, lookup: DataKeyLookup) -> DataKey:
        """:meth:`acquire` of ``lookup``'s key id and context, its key ready.

        The same limits, counters and lock; a sealer's per-message call.
        """
        key = lookup.key
        lock = self._lock
        lock.acquire()
        try:
            lease = self._leases.get(key)
            if (
                lease is not None
                and lease.uses < self._max_messages
                and self._clock() - lease.born < self._max_age
            ):
                lease.uses += 1
                self._hits += 1
                return lease.data_key
            self._misses += 1
        finally:
            lock.release()
        return self._replace(key, lookup.key_id, lookup.context)

    def acquire_cached(self, key_id: str, context: Mapping[str, str]) -> DataKey | None:
        """Like :meth:`acquire` on a hit; None instead of a KMS call on a miss.

        Never blocks on KMS, nor on another thread's KMS call: an event loop
        calls this first and takes a miss to a worker thread.
        """
        key = _cache_key(key_id, context)
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and self._take(lease):
                self._hits += 1
                return lease.data_key
        return None

    def stats(self) -> DataKeyCacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return DataKeyCacheStats(
                self._hits, self._misses, self._generate_calls, self._rotations
            )

    def clear(self) -> None:
        """Forget every cached data key."""
        with self._lock:
            self._leases.clear()

    def _take(self, lease: _Lease) -> bool:
        """Count one use of ``lease`` if it is still within both limits."""
        if lease.uses < self._max_messages and (
            self._clock() - lease.born < self._max_age
        ):
            lease.uses += 1
            return True
        return False

    def _replace(
        self, key: _CacheKey, key_id: str, context: Mapping[str, str]
    ) -> DataKey:
        while True:
            with self._lock:
                lease = self._leases.get(key)
                if lease is not None and self._take(lease):
                    return lease.data_key  # another thread's flight filled it
                flight = self._flights.get(key)
                if flight is None:
                    # Drop the spent key now: it must not outlive its limits
                    # in memory, whether or not KMS gives us a new one.
                    rotating = self._leases.pop(key, None) is not None
                    self._sweep()
                    flight = self._flights[key] = Future()
                    self._generate_calls += 1
                    break
            _wait(flight)  # then look again: the new key has a use for us
        try:
            data_key = self._provider.generate_data_key(key_id, context)
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.set_exception(exc)
            raise
        with self._lock:
            lease = self._leases[key] = _Lease(data_key, self._clock())
            lease.uses = 1
            self._rotations += rotating
            del self._flights[key]
        flight.set_result(None)
        return data_key

    def _sweep(self) -> None:
        """Drop expired keys of contexts no longer used (at most once per max_age)."""
        now = self._clock()
        if now - self._last_sweep < self._max_age:
            return
        self._last_sweep = now
        for key in [
            k for k, v in self._leases.items() if now - v.born >= self._max_age
        ]:
            del self._leases[key]


@dataclass(frozen=True)
class UnwrapCacheStats:
    """Counters of an :class:`UnwrapCache` since it was built."""

    hits: int
    misses: int
    decrypt_calls: int
    evictions: int
    negative_hits: int


class UnwrapCache:
    """Unwrapped data keys by (wrapped key, context): LRU-bounded, with a TTL.

    Each entry keeps the KeyId KMS reported with the key, so a cache hit
    names the sender's master key as surely as the Decrypt it saves.

    The TTL counts from the KMS answer, not from the last use, so that a key
    disabled or revoked in KMS stops opening messages within ``ttl``. A
    permanent refusal (:class:`KmsRequestError`) is remembered for
    ``negative_ttl`` seconds (0 disables this), so a flood of bad wrapped keys
    does not become a flood of KMS calls; transient failures are not.
    """

    def __init__(
        self,
        provider: KeyProvider,
        *,
        max_entries: int = 1024,
        ttl: float = 3600.0,
        negative_ttl: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ConfigError("max_entries must be at least 1")
        if not ttl > 0 or not negative_ttl >= 0:
            raise ConfigError("ttl must be positive and negative_ttl not negative")
        self._provider = provider
        self._max_entries = max_entries
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._lock = threading.Lock()
        # value: (plaintext key, expiry) / (the refusal, expiry); oldest first
        self._keys: OrderedDict[_CacheKey, tuple[UnwrappedKey, float]] = OrderedDict()
        self._refusals: OrderedDict[_CacheKey, tuple[KmsError, float]] = OrderedDict()
        self._flights: dict[_CacheKey, Future[UnwrappedKey]] = {}
        self._contexts = _ContextPairs()
        self._hits = self._misses = self._decrypt_calls = 0
        self._evictions = self._negative_hits = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> UnwrappedKey:
        """The plaintext data key of ``wrapped`` under ``context``, and its KeyId.

        Raises:
            KmsRequestError: KMS refused (now, or within ``negative_ttl``).
            KmsUnavailableError: KMS could not answer.
        """
        return self._unwrap(_cache_key(wrapped, context), wrapped, context)

    def _unwrap(
        self, key: _CacheKey, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        with self._lock:
            found = self._keys.get(key)
            if found is not None and self._clock() < found[1]:
                self._keys.move_to_end(key)
                self._hits += 1
                return found[0]
            refusal = self._refusals.get(key)
            if refusal is not None and self._clock() < refusal[1]:
                self._negative_hits += 1
                raise replay_error(refusal[0]) from refusal[0]
            self._misses += 1
            flight = self._flights.get(key)
            if flight is None:
                self._keys.pop(key, None)
                self._refusals.pop(key, None)
                flight = self._flights[key] = Future()
                self._decrypt_calls += 1
                leader = True
            else:
                leader = False
        if not leader:
            return _wait(flight)
        return self._fetch(key, flight, wrapped, context)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        """Unwrap the copy of the one KMS this cache talks to (see local_copy).

        The copy in region "" if there is one, else the first: a reader with
        one KMS has no other to try.
        """
        # One copy is the usual case, and local_copy's answer then.
        copy = copies[0] if len(copies) == 1 else local_copy(copies)
        # unwrap()'s hit path, inlined: once per message; the key and the
        # lock as in DataKeyCache.acquire.
        known = self._contexts.known.get(id(context))
        if known is not None and known[0] is context and context == known[1]:
            key = (copy.blob, known[2])
        else:
            key = (copy.blob, self._contexts.remember(context))
        lock = self._lock
        lock.acquire()
        try:
            found = self._keys.get(key)
            if found is not None and self._clock() < found[1]:
                self._keys.move_to_end(key)
                self._hits += 1
                return copy, found[0]
        finally:
            lock.release()
        return copy, self._unwrap(key, copy.blob, context)

    def unwrap_by(self, lookup: UnwrapLookup) -> tuple[WrappedCopy, UnwrappedKey]:
        """:meth:`unwrap_any` of ``lookup``'s copies and context, its key ready.

        The same TTL, counters and lock; an opener's per-message call.
        """
        key = lookup.key
        lock = self._lock
        lock.acquire()
        try:
            found = self._keys.get(key)
            if found is not None and self._clock() < found[1]:
                self._keys.move_to_end(key)
                self._hits += 1
                return lookup.copy, found[0]
        finally:
            lock.release()
        # Under the lookup's own key: the entry a miss makes is then found
        # by identity, not by comparing tuples, message after message.
        copy = lookup.copy
        return copy, self._unwrap(key, copy.blob, lookup.context)

    def unwrap_any_cached(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey] | None:
        """Like :meth:`unwrap_any` on a hit; None otherwise, never calls KMS."""
        copy = local_copy(copies)
        found = self.unwrap_cached(copy.blob, context)
        return None if found is None else (copy, found)

    def unwrap_cached(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey | None:
        """Like :meth:`unwrap` on a hit; None on a miss or a remembered refusal.

        Never blocks on KMS, nor on another thread's KMS call (see
        :meth:`DataKeyCache.acquire_cached`).
        """
        key = _cache_key(wrapped, context)
        with self._lock:
            found = self._keys.get(key)
            if found is not None and self._clock() < found[1]:
                self._keys.move_to_end(key)
                self._hits += 1
                return found[0]
        return None

    def stats(self) -> UnwrapCacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return UnwrapCacheStats(
                self._hits,
                self._misses,
                self._decrypt_calls,
                self._evictions,
                self._negative_hits,
            )

    def clear(self) -> None:
        """Forget every cached key and refusal."""
        with self._lock:
            self._keys.clear()
            self._refusals.clear()

    def _fetch(
        self,
        key: _CacheKey,
        flight: Future[UnwrappedKey],
        wrapped: str,
        context: Mapping[str, str],
    ) -> UnwrappedKey:
        try:
            unwrapped = self._provider.decrypt_data_key(wrapped, context)
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
                # A refusal of the caller says nothing of this blob: the next
                # try (with the configuration fixed) must reach KMS.
                if (
                    isinstance(exc, KmsRequestError)
                    and not isinstance(exc, KmsCallerError)
                    and self._negative_ttl > 0
                ):
                    # A copy: the raised error's traceback will hold every frame
                    # it unwinds through, and the messages in them, alive.
                    refusal = replay_error(exc)
                    expiry = self._clock() + self._negative_ttl
                    self._refusals[key] = (refusal, expiry)
                    if len(self._refusals) > self._max_entries:
                        self._refusals.popitem(last=False)
            flight.set_exception(exc)
            raise
        with self._lock:
            del self._flights[key]
            self._keys[key] = (unwrapped, self._clock() + self._ttl)
            if len(self._keys) > self._max_entries:
                self._keys.popitem(last=False)
                self._evictions += 1
        flight.set_result(unwrapped)
        return unwrapped
