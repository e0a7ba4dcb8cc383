"""InMemoryKeyProvider: the KMS stand-in that unit tests of caches and consumers use."""

from __future__ import annotations

import base64

import pytest
from envelope_mq.shared.errors import KmsRequestError, KmsUnavailableError
from envelope_mq.shared.kms import InMemoryKeyProvider, KeyProvider


def test_a_generated_key_unwraps_under_the_same_context() -> None:
    provider = InMemoryKeyProvider()
    data_key = provider.generate_data_key("alias/orders", {"tenant": "a"})
    assert data_key.key_id == "alias/orders"
    assert data_key.plaintext not in base64.b64decode(data_key.wrapped)
    assert (
        provider.decrypt_data_key(data_key.wrapped, {"tenant": "a"}).plaintext
        == data_key.plaintext
    )


def test_each_generated_key_is_new() -> None:
    provider = InMemoryKeyProvider()
    first = provider.generate_data_key("k", {})
    second = provider.generate_data_key("k", {})
    assert first.plaintext != second.plaintext
    assert first.wrapped != second.wrapped


@pytest.mark.parametrize("context", [{}, {"tenant": "b"}, {"tenant": "a", "x": "y"}])
def test_a_key_does_not_unwrap_under_another_context(context: dict[str, str]) -> None:
    provider = InMemoryKeyProvider()
    data_key = provider.generate_data_key("k", {"tenant": "a"})
    with pytest.raises(KmsRequestError) as caught:
        provider.decrypt_data_key(data_key.wrapped, context)
    assert caught.value.code == "InvalidParameter"


def test_a_tampered_blob_is_an_invalid_parameter() -> None:
    provider = InMemoryKeyProvider()
    blob = bytearray(base64.b64decode(provider.generate_data_key("k", {}).wrapped))
    blob[-1] ^= 1
    with pytest.raises(KmsRequestError, match="InvalidParameter"):
        provider.decrypt_data_key(base64.b64encode(blob).decode(), {})


@pytest.mark.parametrize(
    "wrapped", ["", "not base64", "AAE=", base64.b64encode(b"\x00\x01k").decode()]
)
def test_garbage_is_an_invalid_parameter(wrapped: str) -> None:
    with pytest.raises(KmsRequestError, match="InvalidParameter"):
        InMemoryKeyProvider().decrypt_data_key(wrapped, {})


def test_a_blob_from_another_provider_names_an_unknown_key() -> None:
    wrapped = InMemoryKeyProvider().generate_data_key("k", {}).wrapped
    with pytest.raises(KmsRequestError) as caught:
        InMemoryKeyProvider().decrypt_data_key(wrapped, {})
    assert (caught.value.code, caught.value.http_status) == (
        "Forbidden.KeyNotFound",
        404,
    )


def test_listed_key_ids_are_the_only_keys() -> None:
    provider = InMemoryKeyProvider(key_ids=["alias/known"])
    provider.generate_data_key("alias/known", {})
    with pytest.raises(KmsRequestError, match=r"Forbidden\.KeyNotFound"):
        provider.generate_data_key("alias/unknown", {})


def test_calls_are_counted_including_failures() -> None:
    provider = InMemoryKeyProvider()
    data_key = provider.generate_data_key("k", {})
    provider.decrypt_data_key(data_key.wrapped, {})
    with pytest.raises(KmsRequestError):
        provider.decrypt_data_key("AAAA", {})
    assert (provider.generate_calls, provider.decrypt_calls) == (1, 2)


def test_fail_with_fails_every_call_until_recover() -> None:
    provider = InMemoryKeyProvider()
    provider.fail_with(KmsUnavailableError("KMS down", code="SDK.ConnectionFailed"))
    for _ in range(3):
        with pytest.raises(KmsUnavailableError) as caught:
            provider.generate_data_key("k", {})
        assert caught.value.code == "SDK.ConnectionFailed"
    provider.recover()
    provider.generate_data_key("k", {})
    assert provider.generate_calls == 4


def test_fail_with_times_fails_only_that_many_calls() -> None:
    provider = InMemoryKeyProvider()
    data_key = provider.generate_data_key("k", {})
    provider.fail_with(KmsRequestError("refused", code="Rejected.Disabled"), times=2)
    for _ in range(2):
        with pytest.raises(KmsRequestError, match="refused"):
            provider.decrypt_data_key(data_key.wrapped, {})
    assert provider.decrypt_data_key(data_key.wrapped, {}).plaintext == (
        data_key.plaintext
    )


def test_it_satisfies_the_key_provider_protocol() -> None:
    provider: KeyProvider = InMemoryKeyProvider()
    assert provider.generate_data_key("k", {}).key_id == "k"
