"""The metric set: names, values, the no-op default, per-instance registries."""

from __future__ import annotations

import inspect
import threading

import pytest
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import KmsRequestError, KmsUnavailableError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider
from envelope_mq.shared.observability import (
    NULL_METRICS,
    HealthState,
    InstrumentedKeyProvider,
    Metrics,
    MetricsHooks,
    NullMetrics,
    Tally,
)
from prometheus_client import CollectorRegistry, generate_latest

KEY = "key-1"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def metric_families(registry: CollectorRegistry) -> dict[str, str]:
    return {family.name: family.type for family in registry.collect()}


def test_tally_counts_single_and_batched_increments() -> None:
    tally = Tally()
    assert tally.value == 0
    for _ in range(5):
        tally.inc()
    tally.add(10)
    assert tally.value == 15


def test_tally_refuses_to_go_down() -> None:
    with pytest.raises(ValueError, match="only goes up"):
        Tally().add(-1)


def test_tally_loses_no_increment_across_threads() -> None:
    tally = Tally()

    def work() -> None:
        for _ in range(20_000):
            tally.inc()
        tally.add(7)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tally.value == 4 * 20_007


def test_message_counters_are_exposed_with_total_suffix() -> None:
    metrics = Metrics(process_metrics=False)
    for _ in range(3):
        metrics.published()
    metrics.confirmed(2)
    metrics.nacked(1)
    metrics.returned()
    metrics.republished(4)
    metrics.publish_failed(5)
    for _ in range(6):
        metrics.consumed()
    for _ in range(2):
        metrics.handled()
    metrics.requeued()
    metrics.quarantined("undecryptable")
    metrics.quarantined("undecryptable")
    metrics.quarantined("malformed")
    metrics.kms_retry()
    metrics.duplicate_dropped()
    assert value(metrics, "envelope_mq_messages_published_total") == 3
    assert value(metrics, "envelope_mq_messages_confirmed_total") == 2
    assert value(metrics, "envelope_mq_messages_nacked_total") == 1
    assert value(metrics, "envelope_mq_messages_returned_total") == 1
    assert value(metrics, "envelope_mq_messages_republished_total") == 4
    assert value(metrics, "envelope_mq_messages_publish_failed_total") == 5
    assert value(metrics, "envelope_mq_messages_consumed_total") == 6
    assert value(metrics, "envelope_mq_messages_handled_total") == 2
    assert value(metrics, "envelope_mq_messages_requeued_total") == 1
    assert value(metrics, "envelope_mq_kms_retries_total") == 1
    assert value(metrics, "envelope_mq_messages_duplicates_dropped_total") == 1
    quarantined = "envelope_mq_messages_quarantined_total"
    assert value(metrics, quarantined, reason="undecryptable") == 2
    assert value(metrics, quarantined, reason="malformed") == 1


def test_every_name_follows_prometheus_conventions() -> None:
    metrics = Metrics()
    for family in metrics.registry.collect():
        if family.name.startswith("process_"):
            continue
        assert family.name.startswith("envelope_mq_"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name


def test_two_instances_keep_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.published()
    assert value(first, "envelope_mq_messages_published_total") == 1
    assert value(second, "envelope_mq_messages_published_total") == 0
    assert first.registry is not second.registry


def test_nothing_lands_in_the_global_default_registry() -> None:
    from prometheus_client import REGISTRY

    before = set(metric_families(REGISTRY))
    Metrics().published()
    assert not any(name.startswith("envelope_mq") for name in before)
    assert not any(name.startswith("envelope_mq") for name in metric_families(REGISTRY))


def test_null_metrics_has_every_hook_and_returns_what_it_is_given() -> None:
    hooks = {
        name
        for name, member in inspect.getmembers(MetricsHooks)
        if not name.startswith("_") and callable(member)
    }
    assert hooks <= set(dir(NullMetrics))
    assert hooks <= set(dir(Metrics))
    provider = InMemoryKeyProvider([KEY])
    sealer = Sealer(DataKeyCache(provider), KEY)
    opener = Opener(UnwrapCache(provider))
    assert NULL_METRICS.time_sealer(sealer) is sealer
    assert NULL_METRICS.time_opener(opener) is opener
    assert NULL_METRICS.instrument_provider(provider) is provider


def test_seal_and_open_are_timed_one_message_in_n() -> None:
    metrics = Metrics(timing_sample_every=4, process_metrics=False)
    provider = InMemoryKeyProvider([KEY])
    sealer = metrics.time_sealer(Sealer(DataKeyCache(provider), KEY))
    opener = metrics.time_opener(Opener(UnwrapCache(provider)))
    for n in range(10):
        meta = MessageMeta(f"m-{n}", 1_700_000_000)
        sealed = sealer.seal(b"hello", meta)
        opened = opener.open(sealed.body, opener.parse(sealed.headers), meta)
        assert opened.plaintext == b"hello"
    # messages 0, 4 and 8 are timed
    assert value(metrics, "envelope_mq_seal_duration_seconds_count") == 3
    assert value(metrics, "envelope_mq_open_duration_seconds_count") == 3
    assert value(metrics, "envelope_mq_seal_duration_seconds_sum") > 0


def test_timing_every_message_when_asked() -> None:
    metrics = Metrics(timing_sample_every=1, process_metrics=False)
    provider = InMemoryKeyProvider([KEY])
    sealer = metrics.time_sealer(Sealer(DataKeyCache(provider), KEY))
    for n in range(5):
        sealer.seal(b"x", MessageMeta(f"m-{n}", 1))
    assert value(metrics, "envelope_mq_seal_duration_seconds_count") == 5


def test_a_failed_seal_is_not_timed_and_still_raises() -> None:
    metrics = Metrics(timing_sample_every=1, process_metrics=False)
    provider = InMemoryKeyProvider([KEY])
    provider.fail_with(KmsUnavailableError("down", code="SDK.Timeout"))
    sealer = metrics.time_sealer(Sealer(DataKeyCache(provider), KEY))
    with pytest.raises(KmsUnavailableError):
        sealer.seal(b"x", MessageMeta("m", 1))
    assert value(metrics, "envelope_mq_seal_duration_seconds_count") == 0


def test_kms_calls_are_counted_by_operation_and_outcome() -> None:
    metrics = Metrics(process_metrics=False)
    inner = InMemoryKeyProvider([KEY])
    provider = metrics.instrument_provider(inner)
    data_key = provider.generate_data_key(KEY, {"a": "b"})
    assert provider.decrypt_data_key(data_key.wrapped, {"a": "b"}).plaintext == (
        data_key.plaintext
    )
    with pytest.raises(KmsRequestError):
        provider.decrypt_data_key(data_key.wrapped, {"a": "other"})
    inner.fail_with(KmsUnavailableError("down", code="SDK.Timeout"), times=1)
    with pytest.raises(KmsUnavailableError):
        provider.generate_data_key(KEY, {})
    requests = "envelope_mq_kms_requests_total"
    assert value(metrics, requests, operation="GenerateDataKey", outcome="ok") == 1
    assert value(metrics, requests, operation="Decrypt", outcome="ok") == 1
    assert value(metrics, requests, operation="Decrypt", outcome="rejected") == 1
    assert (
        value(metrics, requests, operation="GenerateDataKey", outcome="unavailable")
        == 1
    )
    latency = "envelope_mq_kms_request_duration_seconds_count"
    assert value(metrics, latency, operation="GenerateDataKey") == 2
    assert value(metrics, latency, operation="Decrypt") == 2


def test_an_unexpected_provider_error_counts_as_error_and_propagates() -> None:
    class Broken:
        def generate_data_key(self, key_id: str, context: object) -> object:
            raise RuntimeError("bug")

        def decrypt_data_key(self, wrapped: str, context: object) -> object:
            raise RuntimeError("bug")

    metrics = Metrics(process_metrics=False)
    provider = InstrumentedKeyProvider(Broken(), metrics)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        provider.decrypt_data_key("blob", {})
    assert (
        value(
            metrics,
            "envelope_mq_kms_requests_total",
            operation="Decrypt",
            outcome="error",
        )
        == 1
    )


def test_instrumented_provider_repr_shows_no_key_material() -> None:
    metrics = Metrics(process_metrics=False)
    provider = metrics.instrument_provider(InMemoryKeyProvider([KEY]))
    data_key = provider.generate_data_key(KEY, {})
    assert data_key.plaintext.hex() not in repr(provider)
    assert repr(provider).startswith("InstrumentedKeyProvider(")


def test_key_cache_numbers_are_read_from_the_caches_at_scrape_time() -> None:
    metrics = Metrics(process_metrics=False)
    provider = InMemoryKeyProvider([KEY])
    data_keys = DataKeyCache(provider, max_messages=3)
    unwrap = UnwrapCache(provider, max_entries=1)
    metrics.watch_cache(data_keys)
    metrics.watch_cache(unwrap)
    metrics.watch_cache(unwrap)  # watching twice counts once
    keys = [data_keys.acquire(KEY, {}) for _ in range(7)]  # 3 + 3 + 1 uses
    for data_key in keys:
        unwrap.unwrap(data_key.wrapped, {})
    hits, misses = (
        "envelope_mq_key_cache_hits_total",
        "envelope_mq_key_cache_misses_total",
    )
    assert value(metrics, hits, cache="data_key") == 4
    assert value(metrics, misses, cache="data_key") == 3
    assert value(metrics, "envelope_mq_data_key_rotations_total") == 2
    # three distinct wrapped keys through a one-entry cache, in runs of 3, 3, 1
    assert value(metrics, hits, cache="unwrap") == 4
    assert value(metrics, misses, cache="unwrap") == 3
    assert value(metrics, "envelope_mq_key_cache_evictions_total", cache="unwrap") == 2
    assert value(metrics, "envelope_mq_key_cache_entries", cache="unwrap") == 1
    assert value(metrics, "envelope_mq_key_cache_entries", cache="data_key") == 1


def test_connection_events_feed_gauge_reconnects_and_readiness() -> None:
    health = HealthState()
    metrics = Metrics(health=health, process_metrics=False)
    assert not health.readiness().ok  # nothing reported yet
    metrics.broker_connected("consumer", reconnect=False)
    assert health.readiness().ok
    assert value(metrics, "envelope_mq_broker_connected", component="consumer") == 1
    metrics.broker_lost("consumer", "connection reset")
    report = health.readiness()
    assert not report.ok
    assert report.checks["consumer.broker"] == "connection reset"
    assert value(metrics, "envelope_mq_broker_connected", component="consumer") == 0
    metrics.broker_connected("consumer", reconnect=True)
    assert health.readiness().ok
    assert value(metrics, "envelope_mq_reconnects_total", component="consumer") == 1
    metrics.stopped("consumer")
    assert "consumer.broker" not in health.readiness().checks


def test_kms_outage_makes_not_ready_unless_a_key_is_cached() -> None:
    health = HealthState()
    metrics = Metrics(health=health, process_metrics=False)
    metrics.broker_connected("publisher", reconnect=False)
    inner = InMemoryKeyProvider([KEY])
    cache = DataKeyCache(metrics.instrument_provider(inner), max_messages=2)
    metrics.watch_cache(cache)
    inner.fail_with(KmsUnavailableError("down", code="SDK.Timeout"))
    with pytest.raises(KmsUnavailableError):
        cache.acquire(KEY, {})
    report = health.readiness()
    assert not report.ok
    assert report.checks["kms"].startswith("KMS GenerateDataKey: unavailable")
    inner.recover()
    cache.acquire(KEY, {})
    assert health.readiness().ok
    inner.fail_with(KmsUnavailableError("down", code="SDK.Timeout"))
    with pytest.raises(KmsUnavailableError):
        cache.acquire(KEY, {"tenant": "b"})  # a new context needs KMS
    report = health.readiness()
    assert report.ok  # the first context's key is still cached
    assert report.checks["kms"].startswith("ok (fallback")


def test_a_kms_refusal_still_counts_as_reachable() -> None:
    health = HealthState()
    metrics = Metrics(health=health, process_metrics=False)
    provider = metrics.instrument_provider(InMemoryKeyProvider([KEY]))
    with pytest.raises(KmsRequestError):
        provider.generate_data_key("no-such-key", {})
    assert health.readiness().checks["kms"] == "ok"


def test_alive_beats_feed_liveness() -> None:
    now = [100.0]
    health = HealthState(stall_after=10, clock=lambda: now[0])
    metrics = Metrics(health=health, process_metrics=False)
    metrics.alive("consumer")
    now[0] += 5
    assert health.liveness().ok
    now[0] += 6
    assert not health.liveness().ok
    metrics.stopped("consumer")
    assert health.liveness().ok


def test_exposition_is_valid_text_format() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics()
    metrics.published()
    metrics.quarantined("kms-rejected")
    text = generate_latest(metrics.registry).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "envelope_mq_messages_published" in names
    assert "envelope_mq_messages_quarantined" in names
    assert "process_cpu_seconds" in names


def test_totals_sum_the_message_counters_over_their_labels() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.published()
    metrics.confirmed(1)
    metrics.quarantined("malformed")
    metrics.quarantined("expired")
    totals = metrics.totals()
    assert totals["published"] == 1
    assert totals["confirmed"] == 1
    assert totals["quarantined"] == 2
    assert totals["handled"] == 0
    assert "kms_requests" not in totals


def test_a_consumer_halted_by_its_own_configuration_stays_not_ready() -> None:
    health = HealthState()
    metrics = Metrics(health=health, process_metrics=False)
    metrics.broker_connected("consumer", reconnect=False)
    metrics.halted("consumer", "InvalidAccessKeySecret: wrong AccessKey secret")
    metrics.stopped("consumer")  # run() ends after a halt: still not ready
    report = health.readiness()
    assert not report.ok
    assert "wrong AccessKey secret" in str(report.to_json())
