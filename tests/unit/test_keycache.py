"""DataKeyCache and UnwrapCache over InMemoryKeyProvider, with a hand-driven clock."""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.keycache import (
    DataKeyCache,
    DataKeyLookup,
    UnwrapCache,
    UnwrapLookup,
)
from envelope_mq.shared.kms import InMemoryKeyProvider, ManualClock, WrappedCopy
from fakes import Clock, GatedProvider

THREADS = 8


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "threads never got there"
        time.sleep(0.002)


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except KmsError as err:
        return err


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider()


# --- DataKeyCache -------------------------------------------------------------


def test_a_data_key_is_reused_within_its_limits(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, clock=clock)
    keys = {cache.acquire("k", {"t": "a"}) for _ in range(5)}
    assert len(keys) == 1
    assert provider.generate_calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.generate_calls) == (4, 1, 1)


def test_each_master_key_and_context_has_its_own_data_key(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, clock=clock)
    a = cache.acquire("k", {"t": "a", "u": "1"})
    assert cache.acquire("k", {"u": "1", "t": "a"}) is a
    assert cache.acquire("k", {"t": "b", "u": "1"}) != a
    assert cache.acquire("other", {"t": "a", "u": "1"}) != a
    assert cache.acquire("k", {}) != a
    assert provider.generate_calls == 4


def test_a_data_key_is_replaced_at_its_age_limit(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_age=300.0, clock=clock)
    first = cache.acquire("k", {})
    clock.now += 299.9
    assert cache.acquire("k", {}) is first
    clock.now += 0.1
    second = cache.acquire("k", {})
    assert second != first
    assert provider.decrypt_data_key(second.wrapped, {}).plaintext == second.plaintext
    assert cache.stats().rotations == 1


def test_a_data_key_seals_at_most_max_messages(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_messages=3, clock=clock)
    handed_out = [cache.acquire("k", {}) for _ in range(7)]
    assert [handed_out.index(key) for key in handed_out] == [0, 0, 0, 3, 3, 3, 6]
    assert (provider.generate_calls, cache.stats().rotations) == (3, 2)


def test_a_lookup_shares_the_key_and_the_limits_of_acquire(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_messages=3, max_age=60.0, clock=clock)
    lookup = DataKeyLookup("k", {"u": "1", "t": "a"})
    first = cache.acquire_by(lookup)
    assert cache.acquire("k", {"t": "a", "u": "1"}) is first
    assert cache.acquire_by(lookup) is first
    assert cache.acquire_by(lookup) is not first  # the 4th message: a new key
    assert cache.acquire("k", {"t": "a", "u": "1"}) is cache.acquire_by(lookup)
    clock.now += 60.0
    assert cache.acquire_by(lookup) not in (first,)
    assert provider.generate_calls == 3
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.rotations) == (4, 3, 2)


def test_a_lookup_keeps_the_context_it_was_built_with(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    context = {"t": "a"}
    lookup = DataKeyLookup("k", context)
    context["t"] = "b"
    cache = DataKeyCache(provider, clock=clock)
    data_key = cache.acquire_by(lookup)
    assert cache.acquire("k", {"t": "a"}) is data_key
    assert provider.decrypt_data_key(data_key.wrapped, {"t": "a"}).plaintext == (
        data_key.plaintext
    )
    with pytest.raises(TypeError):
        lookup.context["t"] = "b"  # type: ignore[index]


def test_expired_keys_of_idle_contexts_are_dropped(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_age=60.0, clock=clock)
    for tenant in ("a", "b", "c"):
        cache.acquire("k", {"t": tenant})
    clock.now += 60.0
    cache.acquire("k", {"t": "d"})
    assert len(cache) == 1


@pytest.mark.parametrize("max_messages", [0, -1, 2**32 + 1, 2**40])
def test_max_messages_is_bounded_by_the_gcm_nonce_limit(
    provider: InMemoryKeyProvider, max_messages: int
) -> None:
    with pytest.raises(ConfigError, match="2\\*\\*32"):
        DataKeyCache(provider, max_messages=max_messages)


def test_max_messages_may_be_exactly_two_to_the_32(
    provider: InMemoryKeyProvider,
) -> None:
    DataKeyCache(provider, max_messages=2**32).acquire("k", {})


@pytest.mark.parametrize("max_age", [0.0, -1.0, float("nan")])
def test_max_age_must_be_positive(
    provider: InMemoryKeyProvider, max_age: float
) -> None:
    with pytest.raises(ConfigError):
        DataKeyCache(provider, max_age=max_age)


def test_a_failed_refresh_of_an_expired_key_raises_and_never_reuses_it(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_age=10.0, clock=clock)
    old = cache.acquire("k", {})
    clock.now += 10.0
    provider.fail_with(KmsUnavailableError("down", code="SDK.ConnectionFailed"))
    for _ in range(2):
        with pytest.raises(KmsUnavailableError):
            cache.acquire("k", {})
    provider.recover()
    assert cache.acquire("k", {}) != old
    assert provider.generate_calls == 4


def test_a_used_up_key_is_not_reused_when_kms_refuses(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = DataKeyCache(provider, max_messages=1, clock=clock)
    cache.acquire("k", {})
    provider.fail_with(KmsRequestError("refused", code="Rejected.Disabled"))
    with pytest.raises(KmsRequestError):
        cache.acquire("k", {})


def test_concurrent_publishers_trigger_one_generate_data_key(clock: Clock) -> None:
    provider = GatedProvider()
    cache = DataKeyCache(provider, clock=clock)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(cache.acquire, "k", {"t": "a"}) for _ in range(THREADS)]
        _until(lambda: cache.stats().misses == THREADS)
        provider.gate.set()
        keys = {future.result() for future in futures}
    assert len(keys) == 1
    assert provider.inner.generate_calls == 1


def test_concurrent_publishers_get_one_call_per_key_lifetime(clock: Clock) -> None:
    provider = InMemoryKeyProvider()
    cache = DataKeyCache(provider, max_messages=5, clock=clock)
    with ThreadPoolExecutor(THREADS) as pool:
        handed_out = list(
            pool.map(lambda _: cache.acquire("k", {}), range(THREADS * 10))
        )
    uses = {key: handed_out.count(key) for key in handed_out}
    assert sorted(uses.values()) == [5] * 16
    assert provider.generate_calls == 16


def test_concurrent_publishers_share_the_failure_of_the_one_call(clock: Clock) -> None:
    provider = GatedProvider()
    provider.inner.fail_with(KmsRequestError("refused", code="Rejected.Disabled"))
    cache = DataKeyCache(provider, clock=clock)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(_outcome, lambda: cache.acquire("k", {}))
            for _ in range(THREADS)
        ]
        _until(lambda: cache.stats().misses == THREADS)
        provider.gate.set()
        outcomes = [future.result() for future in futures]
    assert all(isinstance(o, KmsRequestError) for o in outcomes)
    assert {o.code for o in outcomes if isinstance(o, KmsError)} == {
        "Rejected.Disabled"
    }
    assert provider.inner.generate_calls == 1


# --- UnwrapCache ----------------------------------------------------------------


def test_an_unwrapped_key_is_served_from_the_cache(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    data_key = provider.generate_data_key("k", {"t": "a"})
    cache = UnwrapCache(provider, clock=clock)
    for _ in range(3):
        unwrapped = cache.unwrap(data_key.wrapped, {"t": "a"})
        assert unwrapped.plaintext == data_key.plaintext
    assert provider.decrypt_calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.decrypt_calls) == (2, 1, 1)


def test_the_context_is_part_of_the_cache_key(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    data_key = provider.generate_data_key("k", {"t": "a"})
    cache = UnwrapCache(provider, clock=clock)
    cache.unwrap(data_key.wrapped, {"t": "a"})
    with pytest.raises(KmsRequestError):
        cache.unwrap(data_key.wrapped, {"t": "b"})


def test_a_context_changed_in_place_is_looked_up_by_what_it_now_says(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    # The caches remember the pairs of a context object between calls: a
    # dict mutated in between must not be taken for what it used to say.
    context = {"t": "a"}
    data_keys = DataKeyCache(provider, clock=clock)
    first = data_keys.acquire("k", context)
    context["t"] = "b"
    second = data_keys.acquire("k", context)
    assert second is not first
    assert provider.generate_calls == 2
    context["t"] = "a"
    assert data_keys.acquire("k", context) is first
    context["u"] = "c"
    assert data_keys.acquire("k", context) not in (first, second)

    unwrap = UnwrapCache(provider, clock=clock)
    copies = (WrappedCopy("", "k", first.wrapped),)
    opened = {"t": "a"}
    assert unwrap.unwrap_any(copies, opened)[1].plaintext == first.plaintext
    opened["t"] = "b"  # first was wrapped under t=a: KMS must be asked, and refuse
    with pytest.raises(KmsRequestError):
        unwrap.unwrap_any(copies, opened)
    assert provider.decrypt_calls == 2


def test_an_unwrap_lookup_shares_the_entry_and_the_ttl_of_unwrap(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    data_key = provider.generate_data_key("k", {"t": "a"})
    cache = UnwrapCache(provider, ttl=60.0, clock=clock)
    context = {"t": "a"}
    lookup = UnwrapLookup(data_key.copies, context)
    context["t"] = "b"  # the lookup kept its own copy
    used, unwrapped = cache.unwrap_by(lookup)
    assert (used, unwrapped.plaintext) == (data_key.copies[0], data_key.plaintext)
    assert cache.unwrap(data_key.wrapped, {"t": "a"}) is unwrapped
    clock.now += 59.9
    assert cache.unwrap_by(lookup)[1] is unwrapped
    assert provider.decrypt_calls == 1
    clock.now += 0.1
    assert cache.unwrap_by(lookup)[1].plaintext == data_key.plaintext
    assert provider.decrypt_calls == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 2)


def test_an_unwrap_lookup_takes_the_local_copy_and_its_refusals(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    data_key = provider.generate_data_key("k", {})
    remote = WrappedCopy("cn-beijing", "k", "bm90IGEga2V5")
    lookup = UnwrapLookup((remote, *data_key.copies), {})
    assert lookup.copy == data_key.copies[0]
    cache = UnwrapCache(provider, clock=clock)
    assert cache.unwrap_by(lookup)[0] == data_key.copies[0]
    with pytest.raises(KmsRequestError):
        cache.unwrap_by(UnwrapLookup((remote,), {}))
    with pytest.raises(KmsRequestError):  # remembered: no second Decrypt
        cache.unwrap_by(UnwrapLookup((remote,), {}))
    assert (provider.decrypt_calls, cache.stats().negative_hits) == (2, 1)
    with pytest.raises(ValueError, match="no wrapped copy"):
        UnwrapLookup((), {})


def test_the_least_recently_used_key_is_evicted(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    a, b, c = (provider.generate_data_key("k", {}).wrapped for _ in range(3))
    cache = UnwrapCache(provider, max_entries=2, clock=clock)
    cache.unwrap(a, {})
    cache.unwrap(b, {})
    cache.unwrap(a, {})  # a is now the most recently used
    cache.unwrap(c, {})  # evicts b
    assert (len(cache), cache.stats().evictions) == (2, 1)
    calls = provider.decrypt_calls
    cache.unwrap(a, {})
    assert provider.decrypt_calls == calls
    cache.unwrap(b, {})
    assert provider.decrypt_calls == calls + 1


def test_an_unwrapped_key_expires_after_its_ttl(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    wrapped = provider.generate_data_key("k", {}).wrapped
    cache = UnwrapCache(provider, ttl=60.0, clock=clock)
    cache.unwrap(wrapped, {})
    clock.now += 59.9
    cache.unwrap(wrapped, {})
    assert provider.decrypt_calls == 1
    clock.now += 0.1
    cache.unwrap(wrapped, {})
    assert provider.decrypt_calls == 2


def test_a_refusal_is_remembered_for_the_negative_ttl(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = UnwrapCache(provider, negative_ttl=30.0, clock=clock)
    with pytest.raises(KmsRequestError) as first:
        cache.unwrap("bm90IGEga2V5", {})
    for _ in range(5):
        with pytest.raises(KmsRequestError) as again:
            cache.unwrap("bm90IGEga2V5", {})
        assert again.value.code == first.value.code
    assert provider.decrypt_calls == 1
    assert cache.stats().negative_hits == 5
    clock.now += 30.0
    with pytest.raises(KmsRequestError):
        cache.unwrap("bm90IGEga2V5", {})
    assert provider.decrypt_calls == 2


def test_a_zero_negative_ttl_remembers_no_refusal(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = UnwrapCache(provider, negative_ttl=0.0, clock=clock)
    for _ in range(3):
        with pytest.raises(KmsRequestError):
            cache.unwrap("bm90IGEga2V5", {})
    assert provider.decrypt_calls == 3


def test_a_transient_failure_is_not_remembered(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    data_key = provider.generate_data_key("k", {})
    cache = UnwrapCache(provider, clock=clock)
    provider.fail_with(KmsUnavailableError("down", code="Throttling"), times=1)
    with pytest.raises(KmsUnavailableError):
        cache.unwrap(data_key.wrapped, {})
    assert cache.unwrap(data_key.wrapped, {}).plaintext == data_key.plaintext
    assert (provider.decrypt_calls, cache.stats().negative_hits) == (2, 0)


class _Delivery:
    """Stands for a message body held by the consumer while it opens it."""


def test_a_remembered_refusal_does_not_keep_the_callers_messages_alive(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = UnwrapCache(provider, clock=clock)

    def handle() -> weakref.ref[_Delivery]:
        delivery = _Delivery()
        with contextlib.suppress(KmsRequestError):
            cache.unwrap("bm90IGEga2V5", {})
        return weakref.ref(delivery)

    delivery = handle()
    gc.collect()
    assert delivery() is None
    with pytest.raises(KmsRequestError):
        cache.unwrap("bm90IGEga2V5", {})
    assert cache.stats().negative_hits == 1


def test_refusals_are_bounded_like_keys(
    provider: InMemoryKeyProvider, clock: Clock
) -> None:
    cache = UnwrapCache(provider, max_entries=2, clock=clock)
    for wrapped in ("YWFh", "YmJi", "Y2Nj"):
        with pytest.raises(KmsRequestError):
            cache.unwrap(wrapped, {})
    with pytest.raises(KmsRequestError):
        cache.unwrap("YWFh", {})  # the oldest refusal was dropped
    assert provider.decrypt_calls == 4


@pytest.mark.parametrize(
    "options",
    [{"max_entries": 0}, {"ttl": 0.0}, {"ttl": -1.0}, {"negative_ttl": -1.0}],
)
def test_unwrap_cache_limits_are_validated(
    provider: InMemoryKeyProvider, options: dict[str, float]
) -> None:
    with pytest.raises(ConfigError):
        UnwrapCache(provider, **options)  # type: ignore[arg-type]


def test_concurrent_messages_under_a_new_key_cause_one_decrypt(clock: Clock) -> None:
    provider = GatedProvider()
    provider.gate.set()
    data_key = provider.inner.generate_data_key("k", {"t": "a"})
    provider.gate.clear()
    cache = UnwrapCache(provider, clock=clock)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(cache.unwrap, data_key.wrapped, {"t": "a"})
            for _ in range(THREADS)
        ]
        _until(lambda: cache.stats().misses == THREADS)
        provider.gate.set()
        results = {future.result().plaintext for future in futures}
    assert results == {data_key.plaintext}
    assert provider.inner.decrypt_calls == 1


@pytest.mark.parametrize(
    "error",
    [
        KmsRequestError("refused", code="Forbidden.KeyNotFound", http_status=404),
        KmsUnavailableError("down", code="SDK.ReadTimeout"),
    ],
)
def test_concurrent_waiters_get_the_same_error(clock: Clock, error: KmsError) -> None:
    provider = GatedProvider()
    provider.inner.fail_with(error, times=1)
    cache = UnwrapCache(provider, clock=clock)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [
            pool.submit(_outcome, lambda: cache.unwrap("d3JhcHBlZA==", {}))
            for _ in range(THREADS)
        ]
        _until(lambda: cache.stats().misses == THREADS)
        provider.gate.set()
        outcomes = [future.result() for future in futures]
    assert {type(o) for o in outcomes} == {type(error)}
    assert {(o.code, o.http_status) for o in outcomes if isinstance(o, KmsError)} == {
        (error.code, error.http_status)
    }
    assert provider.inner.decrypt_calls == 1


def test_clear_forgets_every_key(provider: InMemoryKeyProvider, clock: Clock) -> None:
    data_key = provider.generate_data_key("k", {})
    producer, consumer = (
        DataKeyCache(provider, clock=clock),
        UnwrapCache(provider, clock=clock),
    )
    first = producer.acquire("k", {})
    consumer.unwrap(data_key.wrapped, {})
    producer.clear()
    consumer.clear()
    assert producer.acquire("k", {}) != first
    consumer.unwrap(data_key.wrapped, {})
    assert (provider.generate_calls, provider.decrypt_calls) == (3, 2)


def test_a_cache_hit_names_the_key_id_kms_reported(clock: Clock) -> None:
    provider = InMemoryKeyProvider(["key-a"])
    data_key = provider.generate_data_key("key-a", {})
    cache = UnwrapCache(provider, clock=clock)
    first = cache.unwrap(data_key.wrapped, {})
    second = cache.unwrap(data_key.wrapped, {})
    assert provider.decrypt_calls == 1
    assert first.key_id == second.key_id == "key-a"


def test_a_refusal_of_the_caller_is_not_remembered_against_the_blob(
    clock: Clock,
) -> None:
    provider = InMemoryKeyProvider(["k"])
    data_key = provider.generate_data_key("k", {})
    cache = UnwrapCache(provider, negative_ttl=30.0, clock=clock)
    provider.fail_with(KmsCallerError("no", code="InvalidAccessKeySecret"), times=1)
    with pytest.raises(KmsCallerError):
        cache.unwrap(data_key.wrapped, {})
    assert cache.unwrap(data_key.wrapped, {}).plaintext == data_key.plaintext


def test_the_shipped_manual_clock_drives_rotation_without_waiting() -> None:
    clock = ManualClock()
    cache = DataKeyCache(InMemoryKeyProvider(), max_age=300.0, clock=clock)
    first = cache.acquire("k", {})
    clock.advance(299.0)
    assert cache.acquire("k", {}) is first
    clock.advance(1.0)
    assert cache.acquire("k", {}).wrapped != first.wrapped
