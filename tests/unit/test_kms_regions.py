"""Data keys in more than one KMS region (shared/regions.py), with in-memory KMSes.

Each region is its own InMemoryKeyProvider: its master keys exist nowhere
else, so a blob opens only in the region that wrapped it, as with real KMS.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from envelope_mq.consumer.budget import DECRYPT_BUDGET_CODE, DecryptBudget
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.unwrapping import unwrapping_from_settings
from envelope_mq.shared.cli_args import add_region_arguments, settings_with_regions
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider, WrappedCopy
from envelope_mq.shared.observability import NULL_METRICS, Metrics
from envelope_mq.shared.regions import (
    NO_REGION_CODE,
    MultiRegionKeys,
    RegionalKeyResolver,
    RegionalUnwrapCache,
    RegionHealth,
    RegionKey,
    consumer_regions,
    region_clients,
    writer_keys_from_settings,
)
from fakes import Clock

CONTEXT = {"tenant": "t1"}


def _down() -> KmsUnavailableError:
    return KmsUnavailableError("KMS Decrypt failed: SDK.ConnectionFailed", code="x")


def _regions() -> tuple[InMemoryKeyProvider, InMemoryKeyProvider, InMemoryKeyProvider]:
    return (
        InMemoryKeyProvider(["key-a"]),
        InMemoryKeyProvider(["key-b"]),
        InMemoryKeyProvider(["key-c"]),
    )


def _writer(
    a: InMemoryKeyProvider,
    b: InMemoryKeyProvider,
    c: InMemoryKeyProvider,
    clock: Clock,
    **options: bool,
) -> MultiRegionKeys:
    return MultiRegionKeys(
        [RegionKey("a", a), RegionKey("b", b, "key-b"), RegionKey("c", c, "key-c")],
        health=RegionHealth(10.0, clock=clock),
        **options,
    )


def _reader(
    order: list[tuple[str, InMemoryKeyProvider]], clock: Clock, **options: object
) -> RegionalUnwrapCache:
    caches = [(name, UnwrapCache(provider)) for name, provider in order]
    return RegionalUnwrapCache(
        caches,
        health=RegionHealth(10.0, clock=clock),
        **options,  # type: ignore[arg-type]
    )


# ---- writing -------------------------------------------------------------------


def test_each_data_key_has_a_copy_per_region_that_opens_there_to_the_same_key() -> None:
    a, b, c = _regions()
    writer = _writer(a, b, c, Clock())
    key = writer.generate_data_key("key-a", CONTEXT)
    assert [(x.region, x.key_id) for x in key.copies] == [
        ("a", "key-a"),
        ("b", "key-b"),
        ("c", "key-c"),
    ]
    for copy, region in zip(key.copies, (a, b, c), strict=True):
        assert region.decrypt_data_key(copy.blob, CONTEXT).plaintext == key.plaintext
        # bound to the context in every region, as the primary is
        with pytest.raises(KmsRequestError):
            region.decrypt_data_key(copy.blob, {"tenant": "t2"})
    # a blob opens only in the region that wrapped it
    with pytest.raises(KmsRequestError):
        a.decrypt_data_key(key.copies[1].blob, CONTEXT)


def test_the_copies_are_made_once_per_data_key_never_per_message() -> None:
    a, b, c = _regions()
    cache = DataKeyCache(_writer(a, b, c, Clock()), max_messages=50)
    for _ in range(120):
        cache.acquire("key-a", CONTEXT)
    assert (a.generate_calls, b.wrap_calls, c.wrap_calls) == (3, 3, 3)


def test_a_primary_that_does_not_answer_fails_over_and_goes_last_for_a_cooldown() -> (
    None
):
    a, b, c = _regions()
    clock = Clock()
    metrics = Metrics(process_metrics=False)
    writer = MultiRegionKeys(
        [RegionKey("a", a), RegionKey("b", b, "key-b"), RegionKey("c", c, "key-c")],
        health=RegionHealth(10.0, clock=clock),
        metrics=metrics,
    )
    a.fail_with(_down())
    key = writer.generate_data_key("key-a", CONTEXT)
    assert [x.region for x in key.copies] == ["b", "c"]  # made in b, a is missing
    assert b.decrypt_data_key(key.wrapped, CONTEXT).plaintext == key.plaintext
    stats = writer.stats()
    assert (stats.failovers, dict(stats.copies_missing)) == (1, {"a": 1})
    registry = metrics.registry
    labels = {"region": "a"}
    assert (
        registry.get_sample_value("envelope_mq_kms_copies_missing_total", labels) == 1
    )
    assert registry.get_sample_value("envelope_mq_kms_failovers_total", {"region": "b"})
    calls = a.generate_calls
    writer.generate_data_key("key-a", CONTEXT)
    assert a.generate_calls == calls  # marked down: not asked again at once
    a.recover()
    clock.advance(11)
    key = writer.generate_data_key("key-a", CONTEXT)
    assert [x.region for x in key.copies] == ["a", "b", "c"]


def test_a_copy_that_cannot_be_made_is_left_out_and_counted_or_refused() -> None:
    a, b, c = _regions()
    c.fail_with(_down())
    lenient = _writer(a, b, c, Clock())
    key = lenient.generate_data_key("key-a", CONTEXT)
    assert [x.region for x in key.copies] == ["a", "b"]
    assert dict(lenient.stats().copies_missing) == {"c": 1}
    strict = _writer(a, b, c, Clock(), require_all_copies=True)
    with pytest.raises(KmsUnavailableError):
        strict.generate_data_key("key-a", CONTEXT)


def test_a_refusal_is_not_an_outage_nothing_fails_over() -> None:
    a, b, c = _regions()
    writer = _writer(a, b, c, Clock())
    with pytest.raises(KmsRequestError):
        writer.generate_data_key("no-such-key", CONTEXT)
    assert b.generate_calls == 0
    with pytest.raises(ConfigError):
        MultiRegionKeys([RegionKey("a", a), RegionKey("b", b)])  # b has no key
    with pytest.raises(ConfigError):  # more copies than wire format v2 carries
        MultiRegionKeys(
            [RegionKey("a", a)] + [RegionKey(f"r{n}", b, "k") for n in range(8)]
        )
    with pytest.raises(ConfigError):
        MultiRegionKeys([RegionKey("", a)])


# ---- reading -------------------------------------------------------------------


def _message_copies(
    a: InMemoryKeyProvider, b: InMemoryKeyProvider, c: InMemoryKeyProvider
) -> tuple[WrappedCopy, ...]:
    return _writer(a, b, c, Clock()).generate_data_key("key-a", CONTEXT).copies


def test_the_reader_asks_its_own_region_first_whatever_the_writer_order() -> None:
    a, b, c = _regions()
    copies = _message_copies(a, b, c)
    reader = _reader([("b", b), ("a", a)], Clock())
    used, key = reader.unwrap_any(copies, CONTEXT)
    assert (used.region, key.key_id) == ("b", "key-b")
    assert (a.decrypt_calls, b.decrypt_calls) == (0, 1)
    assert reader.unwrap_any(copies, CONTEXT)[0].region == "b"  # cached
    assert b.decrypt_calls == 1


def test_a_region_that_does_not_answer_is_skipped_then_tried_last() -> None:
    a, b, c = _regions()
    clock = Clock()
    reader = _reader([("a", a), ("b", b)], clock)
    messages = [_message_copies(a, b, c) for _ in range(5)]  # five data keys
    a.fail_with(_down())
    for copies in messages:
        used, _key = reader.unwrap_any(copies, CONTEXT)
        assert used.region == "b"
    assert a.decrypt_calls == 1  # only the first miss paid for the dead region
    a.recover()
    clock.advance(11)
    assert reader.unwrap_any(_message_copies(a, b, c), CONTEXT)[0].region == "a"


def test_a_hit_in_any_region_comes_before_a_kms_call_in_another() -> None:
    a, b, c = _regions()
    clock = Clock()
    reader = _reader([("a", a), ("b", b)], clock)
    copies = _message_copies(a, b, c)
    a.fail_with(_down())
    reader.unwrap_any(copies, CONTEXT)  # through b, cached there
    a.recover()
    clock.advance(11)  # a is worth asking again, but b's cache answers
    before = a.decrypt_calls
    assert reader.unwrap_any(copies, CONTEXT)[0].region == "b"
    assert reader.unwrap_any_cached(copies, CONTEXT) is not None
    assert a.decrypt_calls == before


def test_a_refused_copy_moves_on_to_the_next_and_every_refusal_is_refused() -> None:
    a, b, c = _regions()
    copies = list(_message_copies(a, b, c))
    forged = WrappedCopy("a", "key-a", copies[2].blob)  # c's blob, labelled a
    reader = _reader([("a", a), ("b", b)], Clock())
    used, _key = reader.unwrap_any([forged, copies[1]], CONTEXT)
    assert used.region == "b"
    with pytest.raises(KmsRequestError):
        reader.unwrap_any([forged], CONTEXT)


def test_no_copy_opened_while_a_region_was_away_means_wait_not_quarantine() -> None:
    a, b, c = _regions()
    copies = list(_message_copies(a, b, c))
    forged = WrappedCopy("b", "key-b", copies[2].blob)
    reader = _reader([("a", a), ("b", b)], Clock())
    a.fail_with(_down())
    with pytest.raises(KmsUnavailableError):
        reader.unwrap_any([copies[0], forged], CONTEXT)


def test_caller_errors_and_budget_deferrals_are_raised_at_once() -> None:
    a, b, c = _regions()
    copies = _message_copies(a, b, c)
    reader = _reader([("a", a), ("b", b)], Clock(), deferrals=[DECRYPT_BUDGET_CODE])
    a.fail_with(
        KmsCallerError("KMS Decrypt failed: SignatureDoesNotMatch", code="x"), times=1
    )
    with pytest.raises(KmsCallerError):
        reader.unwrap_any(copies, CONTEXT)
    a.fail_with(KmsUnavailableError("over budget", code=DECRYPT_BUDGET_CODE), times=1)
    with pytest.raises(KmsUnavailableError):
        reader.unwrap_any(copies, CONTEXT)
    assert b.decrypt_calls == 0
    assert reader.health.down() == []  # a budget says nothing of the region


def test_copies_only_in_unknown_regions_are_refused_and_blank_is_the_default() -> None:
    a, b, c = _regions()
    copies = _message_copies(a, b, c)
    reader = _reader([("a", a), ("b", b)], Clock(), default="b")
    with pytest.raises(KmsRequestError) as refused:
        reader.unwrap_any([copies[2]], CONTEXT)
    assert refused.value.code == NO_REGION_CODE
    blank = dataclasses.replace(copies[1], region="")
    assert reader.unwrap_any([blank], CONTEXT)[0] is blank


def test_one_decrypt_budget_bounds_every_region() -> None:
    a, b, c = _regions()
    copies = _message_copies(a, b, c)
    clock = Clock()
    budget = DecryptBudget(a, rate=1, clock=clock)
    twin = budget.sharing(b)
    budget.decrypt_data_key(copies[0].blob, CONTEXT)
    with pytest.raises(KmsUnavailableError):
        twin.decrypt_data_key(copies[1].blob, CONTEXT)
    assert budget.deferred == twin.deferred == 1


def test_a_sibling_provider_unwraps_in_its_own_region() -> None:
    a, b, c = _regions()
    copies = _message_copies(a, b, c)
    kept = KeepAliveProvider(a)
    assert kept.sharing(b).decrypt_data_key(copies[1].blob, CONTEXT).key_id == "key-b"


# ---- configuration -------------------------------------------------------------


def test_settings_read_regions_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "ALIBABA_CLOUD_REGION_ID": "cn-shanghai",
            "KMS_REGION_ENDPOINTS": "cn-beijing=https://kms.example:8443, "
            "cn-shenzhen=127.0.0.1:9000",
            "KMS_WRAP_ALSO": "cn-beijing=key-b",
            "KMS_REQUIRE_ALL_COPIES": "true",
        }
    )
    assert settings.kms_region_endpoints == (
        ("cn-beijing", "https://kms.example:8443"),
        ("cn-shenzhen", "127.0.0.1:9000"),
    )
    assert settings.kms_wrap_also == (("cn-beijing", "key-b"),)
    assert settings.kms_require_all_copies is True
    assert consumer_regions(settings) == ("cn-shanghai", "cn-beijing", "cn-shenzhen")
    ordered = Settings.from_env({"KMS_REGIONS": "cn-beijing, cn-hangzhou"})
    assert consumer_regions(ordered) == ("cn-beijing", "cn-hangzhou")
    for bad in (
        {"KMS_WRAP_ALSO": "cn-beijing"},
        {"KMS_REGION_ENDPOINTS": "a=x,a=y"},
        {"KMS_REQUIRE_ALL_COPIES": "maybe"},
    ):
        with pytest.raises(ConfigError):
            Settings.from_env(bad)


def test_region_flags_override_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_region_arguments(parser, writer=True)
    args = parser.parse_args(
        ["--wrap-also", "b=key-b", "--region-endpoint", "b=127.0.0.1:1"]
    )
    settings = settings_with_regions(
        Settings.from_env({"KMS_WRAP_ALSO": "c=key-c"}), args
    )
    assert settings.kms_wrap_also == (("b", "key-b"),)
    assert settings.kms_region_endpoints == (("b", "127.0.0.1:1"),)
    assert settings.kms_require_all_copies is False
    reader = argparse.ArgumentParser()
    add_region_arguments(reader, writer=False)
    ordered = settings_with_regions(Settings(), reader.parse_args(["--regions", "b,a"]))
    assert consumer_regions(ordered) == ("b", "a")


def test_settings_with_regions_wire_a_client_and_a_cache_per_region() -> None:
    settings = Settings(
        region_id="cn-shanghai",
        kms_endpoint="127.0.0.1:1",
        kms_key_id="key-sh",
        kms_region_endpoints=(("cn-beijing", "127.0.0.1:2"),),
        kms_wrap_also=(("cn-beijing", "key-bj"),),
        access_key_id="id",
        access_key_secret="secret",
    )
    wiring = unwrapping_from_settings(
        settings, NULL_METRICS, provider=None, max_decrypt_rate=5, keep_alive=True
    )
    assert isinstance(wiring.unwrapper, RegionalUnwrapCache)
    assert wiring.unwrapper.regions == ("cn-shanghai", "cn-beijing")
    assert isinstance(wiring.resolver, RegionalKeyResolver)
    assert wiring.keep_alive is not None
    assert wiring.owned is not None
    wiring.owned.close()
    keys, owned = writer_keys_from_settings(settings)
    assert repr(keys) == "MultiRegionKeys(cn-shanghai, cn-beijing)"
    owned.close()
    # A provider of the caller's own is one KMS, whatever the settings say.
    single = unwrapping_from_settings(
        settings,
        NULL_METRICS,
        provider=InMemoryKeyProvider(["k"]),
        max_decrypt_rate=5,
        keep_alive=False,
    )
    assert isinstance(single.unwrapper, UnwrapCache)
    assert (single.keep_alive, single.owned) == (None, None)
    plain, owned = writer_keys_from_settings(Settings(kms_key_id="k"))
    assert plain is owned  # no KMS_WRAP_ALSO: the one client
    owned.close()


@pytest.mark.parametrize("typo", ["htps://kms.example", "kms.example/path"])
def test_a_malformed_region_endpoint_is_refused_naming_the_setting_and_region(
    typo: str,
) -> None:
    settings = Settings(
        region_id="cn-shanghai",
        kms_endpoint="127.0.0.1:1",
        kms_key_id="key-sh",
        kms_region_endpoints=(("cn-beijing", typo),),
        kms_wrap_also=(("cn-beijing", "key-bj"),),
        access_key_id="id",
        access_key_secret="secret",
    )
    wirings = (
        lambda: region_clients(settings, ["cn-shanghai", "cn-beijing"]),
        lambda: writer_keys_from_settings(settings),
        lambda: unwrapping_from_settings(
            settings, NULL_METRICS, provider=None, max_decrypt_rate=5, keep_alive=False
        ),
    )
    for wire in wirings:
        with pytest.raises(ConfigError) as refused:
            wire()
        assert str(refused.value).startswith(
            "KMS_REGION_ENDPOINTS entry for cn-beijing must be host:port"
        )
    # The region's own endpoint is still KMS_ENDPOINT.
    own = dataclasses.replace(settings, kms_endpoint=typo, kms_region_endpoints=())
    with pytest.raises(ConfigError, match=r"^KMS_ENDPOINT must be"):
        region_clients(own, ["cn-shanghai"])


def test_allowed_keys_resolve_in_the_region_that_has_them() -> None:
    a, b, _c = _regions()
    resolver = RegionalKeyResolver([("a", a), ("b", b)])  # type: ignore[list-item]
    assert resolver.describe_key_id("key-b") == "key-b"  # a does not know it
    # An ARN names its region; one this reader does not use names its id as is.
    assert resolver.describe_key_id("acs:kms:zz:1234:key/key-q") == "key-q"
    with pytest.raises(KmsRequestError):
        resolver.describe_key_id("key-z")
