from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from envelope_mq.shared.envelope import (
    EnvelopeHeader,
    MessageMeta,
    OpenedMessage,
    Opener,
    SealedMessage,
)
from envelope_mq.shared.envelope import Sealer as _Sealer
from envelope_mq.shared.errors import (
    DecryptionError,
    KeyMismatchError,
    KmsRequestError,
    KmsUnavailableError,
    SealingError,
)
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import (
    DataKey,
    InMemoryKeyProvider,
    UnwrappedKey,
    WrappedCopy,
    local_copy,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

KEY_ID = "0b30658a-ed1a-4922-b8f7-a673ca9c2ab4"
CONTEXT = {"tenant": "acme", "app": "orders"}
META = MessageMeta("m-1", 1735689600, "application/json", "utf-8", "order.created")


def Sealer(*args: Any, wire_version: int = 1, **kwargs: Any) -> _Sealer:  # noqa: N802
    """The recipe under v1's headers; test_envelope_v2.py checks v2's."""
    return _Sealer(*args, wire_version=wire_version, **kwargs)


def _data_key(n: int = 1) -> DataKey:
    return DataKey(plaintext=bytes([n]) * 32, wrapped=f"wrapped-{n}", key_id=KEY_ID)


class FixedKeys:
    """Hands out ``keys`` in turn (the last one forever) and counts calls."""

    def __init__(self, *keys: DataKey) -> None:
        self.keys = list(keys) or [_data_key()]
        self.calls = 0

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        self.calls += 1
        return self.keys[min(self.calls, len(self.keys)) - 1]


class KnownKeys:
    """Unwraps by lookup, or returns ``key`` for any wrapped key; counts calls."""

    def __init__(self, *keys: DataKey, key: bytes | None = None) -> None:
        self.by_wrapped = {k.wrapped: k.plaintext for k in keys or [_data_key()]}
        self.key = key
        self.calls = 0
        self.failure: Exception | None = None

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> Any:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        key = self.key if self.key is not None else self.by_wrapped[wrapped]
        # Not UnwrappedKey, which refuses a bad key: the Opener must refuse it too.
        return SimpleNamespace(plaintext=key, key_id=KEY_ID)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, Any]:
        copy = local_copy(copies)
        return copy, self.unwrap(copy.blob, context)


class ProviderKeys:
    """Both collaborators over a real InMemoryKeyProvider: a fresh key per call."""

    def __init__(self) -> None:
        self.provider = InMemoryKeyProvider()

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.provider.generate_data_key(key_id, context)

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> UnwrappedKey:
        return self.provider.decrypt_data_key(wrapped, context)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        copy = local_copy(copies)
        return copy, self.unwrap(copy.blob, context)


def _open(
    opener: Opener, headers: Mapping[str, object], body: bytes, meta: MessageMeta
) -> bytes:
    return opener.open(body, opener.parse(headers), meta).plaintext


# --- round trips ----------------------------------------------------------------


def test_sealed_message_opens_to_its_plaintext_context_and_key_id() -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    opener = Opener(KnownKeys())
    opened = opener.open(sealed.body, opener.parse(sealed.headers), sealed.meta)
    assert opened.plaintext == b"payload"
    assert dict(opened.context) == CONTEXT
    assert opened.key_id == KEY_ID
    assert opened.meta == META


def test_sealed_message_carries_exactly_the_five_headers() -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    assert sealed.headers == {
        "x-emq-version": 1,
        "x-emq-alg": "AES-256-GCM",
        "x-emq-key-id": KEY_ID,
        "x-emq-data-key": "wrapped-1",
        "x-emq-context": '{"app":"orders","tenant":"acme"}',
    }
    assert len(sealed.body) == 12 + len(b"payload") + 16


def test_each_seal_draws_a_fresh_nonce() -> None:
    sealer = Sealer(FixedKeys(), KEY_ID)
    nonces = {sealer.seal(b"same", META).body[:12] for _ in range(50)}
    assert len(nonces) == 50


def test_round_trip_through_a_real_in_memory_provider() -> None:
    keys = ProviderKeys()
    sealed = Sealer(keys, KEY_ID, CONTEXT).seal(b"payload", META)
    assert _open(Opener(keys), sealed.headers, sealed.body, META) == b"payload"


def test_kms_refusal_under_a_changed_context_passes_through() -> None:
    keys = ProviderKeys()
    sealed = Sealer(keys, KEY_ID, CONTEXT).seal(b"payload", META)
    headers = {**sealed.headers, "x-emq-context": '{"app":"orders","tenant":"evil"}'}
    with pytest.raises(KmsRequestError):
        _open(Opener(keys), headers, sealed.body, META)


contexts = st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5)
optional_text = st.none() | st.text(max_size=60)
metas = st.builds(
    MessageMeta,
    message_id=st.text(min_size=1, max_size=60),
    timestamp=st.integers(0, 2**64 - 1),
    content_type=optional_text,
    content_encoding=optional_text,
    type=optional_text,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.integers(0, 64), st.integers(0, 2**20)),
    seed=st.integers(0, 2**32),
    context=contexts,
    meta=metas,
)
@example(size=0, seed=0, context={}, meta=MessageMeta("m", 0))
@example(size=2**20, seed=1, context={"é": "ü"}, meta=META)
def test_round_trip_of_any_payload_context_and_properties(
    size: int, seed: int, context: dict[str, str], meta: MessageMeta
) -> None:
    plaintext = random.Random(seed).randbytes(size)
    sealed = Sealer(FixedKeys(), KEY_ID, context).seal(plaintext, meta)
    opener = Opener(KnownKeys())
    opened = opener.open(sealed.body, opener.parse(sealed.headers), meta)
    assert opened.plaintext == plaintext
    assert dict(opened.context) == context


# --- what must fail ---------------------------------------------------------------


HEADER_CHANGES: list[Any] = [
    pytest.param("x-emq-key-id", "alias/other", id="key id"),
    pytest.param("x-emq-data-key", "wrapped-2", id="wrapped data key"),
    pytest.param("x-emq-context", '{"app":"orders","tenant":"evil"}', id="context"),
    pytest.param("x-emq-context", "{}", id="context emptied"),
]


@pytest.mark.parametrize(("name", "value"), HEADER_CHANGES)
def test_changing_any_bound_header_fails(name: str, value: str) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    # The fake KMS unwraps anything to the right key: only the AAD can object.
    opener = Opener(KnownKeys(key=_data_key().plaintext))
    with pytest.raises(DecryptionError):
        _open(opener, {**sealed.headers, name: value}, sealed.body, META)


META_CHANGES: list[Any] = [
    pytest.param({"message_id": "m-2"}, id="message_id"),
    pytest.param({"timestamp": META.timestamp + 1}, id="timestamp"),
    pytest.param({"content_type": "text/plain"}, id="content_type"),
    pytest.param({"content_type": None}, id="content_type unset"),
    pytest.param({"content_encoding": "gzip"}, id="content_encoding"),
    pytest.param({"content_encoding": ""}, id="content_encoding empty"),
    pytest.param({"type": "order.deleted"}, id="type"),
    pytest.param({"type": None}, id="type unset"),
]


@pytest.mark.parametrize("change", META_CHANGES)
def test_changing_any_bound_property_fails(change: dict[str, Any]) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    opener = Opener(KnownKeys())
    with pytest.raises(DecryptionError):
        _open(opener, sealed.headers, sealed.body, dataclasses.replace(META, **change))


def test_unset_property_and_empty_property_are_not_interchangeable() -> None:
    meta = MessageMeta("m-1", 0, content_type=None)
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", meta)
    with pytest.raises(DecryptionError):
        _open(
            Opener(KnownKeys()), sealed.headers, sealed.body, MessageMeta("m-1", 0, "")
        )


def test_body_moved_under_another_messages_headers_fails() -> None:
    sealer = Sealer(FixedKeys(), KEY_ID, CONTEXT)
    first = sealer.seal(b"first", META)
    second = sealer.seal(b"second", dataclasses.replace(META, message_id="m-2"))
    assert first.headers == second.headers  # same data key, same context
    opener = Opener(KnownKeys())
    with pytest.raises(DecryptionError):
        _open(opener, second.headers, first.body, second.meta)


@pytest.mark.parametrize("wire_version", [1, 2])
def test_sealed_and_opened_messages_are_what_their_constructors_give(
    wire_version: int,
) -> None:
    # seal and open fill their results in place, without __init__.
    provider = InMemoryKeyProvider()
    sealer = Sealer(DataKeyCache(provider), KEY_ID, CONTEXT, wire_version=wire_version)
    opener = Opener(UnwrapCache(provider))
    for _ in range(2):  # a miss, then a hit on both sides
        sealed = sealer.seal(b"secret plaintext", META)
        assert sealed == SealedMessage(sealed.body, sealed.headers, META)
        opened = opener.open(sealed.body, opener.parse(sealed.headers), META)
        assert opened == OpenedMessage(b"secret plaintext", CONTEXT, KEY_ID, META)
        assert "secret" not in repr(opened)
        with pytest.raises(dataclasses.FrozenInstanceError):
            opened.key_id = "other"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            sealed.body = b""  # type: ignore[misc]


def test_a_cached_data_key_opens_only_under_exactly_what_it_was_sealed_with() -> None:
    provider = InMemoryKeyProvider()
    sealer = Sealer(DataKeyCache(provider), KEY_ID, CONTEXT)
    opener = Opener(UnwrapCache(provider))
    first = sealer.seal(b"first", META)
    second = sealer.seal(b"second", dataclasses.replace(META, message_id="m-2"))
    other_key = provider.generate_data_key(KEY_ID, CONTEXT).wrapped
    assert first.headers == second.headers  # one cached data key
    assert _open(opener, first.headers, first.body, META) == b"first"
    decrypts = provider.decrypt_calls
    for change in META_CHANGES:
        meta = dataclasses.replace(META, **change.values[0])
        with pytest.raises(DecryptionError):
            _open(opener, first.headers, first.body, meta)
    for name, value in [("x-emq-key-id", "alias/other"), ("x-emq-data-key", other_key)]:
        with pytest.raises(DecryptionError):
            _open(opener, {**first.headers, name: value}, first.body, META)
    with pytest.raises(DecryptionError):
        _open(opener, second.headers, first.body, second.meta)
    # The cache never hands the key out under another context: KMS is asked.
    evil = {**first.headers, "x-emq-context": '{"app":"orders","tenant":"evil"}'}
    with pytest.raises(KmsRequestError):
        _open(opener, evil, first.body, META)
    assert provider.decrypt_calls == decrypts + 2  # the other key, the evil context


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="tag"),
        pytest.param(lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], id="ciphertext"),
        pytest.param(lambda b: bytes([b[0] ^ 1]) + b[1:], id="nonce"),
        pytest.param(lambda b: b[:-1], id="one byte short"),
        pytest.param(lambda b: b + b"\x00", id="one byte long"),
    ],
)
def test_damaged_body_fails(damage: Any) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    with pytest.raises(DecryptionError):
        _open(Opener(KnownKeys()), sealed.headers, damage(sealed.body), META)


def test_wrong_data_key_fails() -> None:
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", META)
    opener = Opener(KnownKeys(key=_data_key(2).plaintext))
    with pytest.raises(DecryptionError):
        _open(opener, sealed.headers, sealed.body, META)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_unwrapped_key_of_the_wrong_length_fails(size: int) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", META)
    with pytest.raises(DecryptionError) as caught:
        _open(Opener(KnownKeys(key=bytes(size))), sealed.headers, sealed.body, META)
    assert str(caught.value) == DecryptionError.MESSAGE


@pytest.mark.parametrize("key", [bytearray(32), list(range(32)), "k" * 32])
def test_unwrapped_key_that_is_not_bytes_fails(key: Any) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", META)
    with pytest.raises(DecryptionError):
        _open(Opener(KnownKeys(key=key)), sealed.headers, sealed.body, META)


@pytest.mark.parametrize(
    "failure",
    [
        KmsUnavailableError("KMS Decrypt failed: Throttling", code="Throttling"),
        KmsRequestError("KMS Decrypt failed: Forbidden.KeyNotFound", code="Forbidden"),
    ],
)
def test_kms_failures_pass_through_unchanged(failure: Exception) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", META)
    unwrapper = KnownKeys()
    unwrapper.failure = failure
    with pytest.raises(type(failure)) as caught:
        _open(Opener(unwrapper), sealed.headers, sealed.body, META)
    assert caught.value is failure


MALFORMED: list[Any] = [
    pytest.param({"x-emq-version": 2}, b"", id="version 2"),
    pytest.param({"x-emq-version": True}, b"", id="version bool"),
    pytest.param({"x-emq-alg": "AES-128-GCM"}, b"", id="alg"),
    pytest.param({"x-emq-key-id": b"key"}, b"", id="key id bytes"),
    pytest.param({"x-emq-data-key": 1}, b"", id="data key int"),
    pytest.param({"x-emq-context": '{"app": "orders"}'}, b"", id="context spaced"),
    pytest.param({"x-emq-context": "{"}, b"", id="context not json"),
    pytest.param({"x-emq-data-key": "A" * 4096}, b"", id="oversized"),
    pytest.param({}, b"short", id="short body"),
]


@pytest.mark.parametrize(("change", "body"), MALFORMED)
def test_malformed_messages_fail_identically_before_any_kms_call(
    change: dict[str, object], body: bytes
) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    unwrapper = KnownKeys()
    with pytest.raises(DecryptionError) as caught:
        _open(
            Opener(unwrapper), {**sealed.headers, **change}, body or sealed.body, META
        )
    assert str(caught.value) == DecryptionError.MESSAGE
    assert caught.value.args == (DecryptionError.MESSAGE,)
    assert caught.value.__cause__ is not None
    assert unwrapper.calls == 0


@pytest.mark.parametrize(
    "meta",
    [
        MessageMeta(None, 0),  # type: ignore[arg-type]
        MessageMeta("m", -1),
        MessageMeta("m", "0"),  # type: ignore[arg-type]
        MessageMeta("m", 0, "x" * 256),
    ],
)
def test_invalid_received_properties_fail_before_any_kms_call(
    meta: MessageMeta,
) -> None:
    sealed = Sealer(FixedKeys(), KEY_ID).seal(b"payload", META)
    unwrapper = KnownKeys()
    with pytest.raises(DecryptionError):
        _open(Opener(unwrapper), sealed.headers, sealed.body, meta)
    assert unwrapper.calls == 0


def test_remembered_headers_are_still_checked_for_version_and_algorithm() -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    opener = Opener(KnownKeys())
    assert opener.parse(sealed.headers) == opener.parse(sealed.headers)
    with pytest.raises(DecryptionError):
        opener.parse({**sealed.headers, "x-emq-version": 2})
    with pytest.raises(DecryptionError):
        opener.parse({**sealed.headers, "x-emq-alg": "AES-128-GCM"})


# --- sealing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "meta",
    [
        MessageMeta(None, 0),  # type: ignore[arg-type]
        MessageMeta("m", -1),
        MessageMeta("m", 2**64),
        MessageMeta("m", True),
        MessageMeta("m", 0, b"text/plain"),  # type: ignore[arg-type]
        MessageMeta("m" * 256, 0),
        MessageMeta("m", 0, type="\ud800"),
    ],
)
def test_invalid_properties_are_refused_before_a_data_key_is_counted(
    meta: MessageMeta,
) -> None:
    keys = FixedKeys()
    with pytest.raises(SealingError):
        Sealer(keys, KEY_ID).seal(b"payload", meta)
    assert keys.calls == 0


@pytest.mark.parametrize("plaintext", ["text", bytearray(b"x"), None])
def test_plaintext_must_be_bytes(plaintext: Any) -> None:
    with pytest.raises(SealingError):
        Sealer(FixedKeys(), KEY_ID).seal(plaintext, META)


@pytest.mark.parametrize(
    "context", [{"tenant": 1}, {"tenant": None}, {2: "x"}, ["a"], {"k": "\udc80"}]
)
def test_sealer_refuses_a_context_that_is_not_str_to_str(context: Any) -> None:
    with pytest.raises(SealingError):
        Sealer(FixedKeys(), KEY_ID, context)


@pytest.mark.parametrize("key_id", ["", None, b"key"])
def test_sealer_needs_a_master_key_id(key_id: Any) -> None:
    with pytest.raises(SealingError):
        Sealer(FixedKeys(), key_id)


def test_sealer_refuses_headers_a_reader_would_refuse() -> None:
    huge = DataKey(plaintext=bytes(32), wrapped="A" * 4096, key_id=KEY_ID)
    with pytest.raises(SealingError):
        Sealer(FixedKeys(huge), KEY_ID).seal(b"payload", META)


def test_context_is_copied_when_the_sealer_is_built() -> None:
    context = dict(CONTEXT)
    sealer = Sealer(FixedKeys(), KEY_ID, context)
    context["tenant"] = "evil"
    sealed = sealer.seal(b"payload", META)
    assert sealed.headers["x-emq-context"] == '{"app":"orders","tenant":"acme"}'


def test_rotated_data_key_is_used_from_the_next_message_on() -> None:
    keys = FixedKeys(_data_key(1), _data_key(2))
    sealer = Sealer(keys, KEY_ID, CONTEXT)
    first, second = sealer.seal(b"one", META), sealer.seal(b"two", META)
    assert first.headers["x-emq-data-key"] == "wrapped-1"
    assert second.headers["x-emq-data-key"] == "wrapped-2"
    opener = Opener(KnownKeys(_data_key(1), _data_key(2)))
    assert _open(opener, first.headers, first.body, META) == b"one"
    assert _open(opener, second.headers, second.body, META) == b"two"


def test_changing_returned_headers_does_not_affect_later_messages() -> None:
    sealer = Sealer(FixedKeys(), KEY_ID, CONTEXT)
    sealer.seal(b"one", META).headers["x-emq-key-id"] = "tampered"
    assert sealer.seal(b"two", META).headers["x-emq-key-id"] == KEY_ID


def test_header_context_is_read_only() -> None:
    header = EnvelopeHeader(KEY_ID, "wrapped-1", {"tenant": "acme"})
    with pytest.raises(TypeError):
        header.context["tenant"] = "evil"  # type: ignore[index]


def test_an_envelope_header_built_by_hand_opens_like_a_parsed_one() -> None:
    sealed = Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"payload", META)
    header = EnvelopeHeader(KEY_ID, "wrapped-1", CONTEXT)
    assert header == Opener(KnownKeys()).parse(sealed.headers)
    assert Opener(KnownKeys()).open(sealed.body, header, META).plaintext == b"payload"


# --- no secrets in reprs ------------------------------------------------------


def test_reprs_show_neither_plaintext_nor_key_material() -> None:
    secret = b"top secret plaintext"
    data_key = _data_key(7)
    sealer = Sealer(FixedKeys(data_key), KEY_ID, CONTEXT)
    sealed = sealer.seal(secret, META)
    opener = Opener(KnownKeys(data_key))
    opened = opener.open(sealed.body, opener.parse(sealed.headers), META)
    assert isinstance(opened, OpenedMessage)
    texts = [repr(opened), str(opened), repr(sealer), repr(opener), repr(data_key)]
    texts += [repr(sealed), repr(opener.parse(sealed.headers))]
    for text in texts:
        for needle in (repr(secret), secret.hex(), repr(data_key.plaintext)):
            assert needle not in text
        assert data_key.plaintext.hex() not in text
        assert "top secret" not in text


# --- wrapped copies (the data model of wire format v2) -------------------------


def test_a_data_key_lists_its_copies_primary_first() -> None:
    extra = (WrappedCopy("cn-shanghai", "key-b", "YmxvYg=="),)
    key = DataKey(bytes(32), "cHJpbWFyeQ==", KEY_ID, region="cn-hangzhou", extra=extra)
    assert key.copies == (WrappedCopy("cn-hangzhou", KEY_ID, "cHJpbWFyeQ=="), *extra)
    assert _data_key().copies == (WrappedCopy("", KEY_ID, "wrapped-1"),)


def test_a_single_kms_reader_unwraps_the_default_regions_copy_else_the_first() -> None:
    a, b, c = (WrappedCopy(r, "k", "YQ==") for r in ("eu", "", "us"))
    assert local_copy((a, b, c)) is b
    assert local_copy((a, c)) is a
    with pytest.raises(ValueError, match="no wrapped copy"):
        local_copy(())


class UsesSecondCopy:
    """An unwrapper that opens with the second copy, as a multi-region one may."""

    def __init__(self, data_key: DataKey, verified: str) -> None:
        self.data_key, self.verified = data_key, verified

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        return copies[1], UnwrappedKey(self.data_key.plaintext, self.verified)


def test_the_key_id_is_checked_against_the_copy_actually_used() -> None:
    data_key = _data_key()
    header = EnvelopeHeader(
        KEY_ID,
        "wrapped-1",
        {},
        (WrappedCopy("", KEY_ID, "wrapped-1"), WrappedCopy("eu", "key-eu", "d2E=")),
    )
    sealer = Sealer(FixedKeys(data_key), KEY_ID)
    sealed = sealer._seal_with(b"x", META, nonce=bytes(12))
    # The body is bound to the v1 header: rebuild the AAD's copy for v1 readers.
    v1 = Opener(KnownKeys()).parse(sealed.headers)
    assert v1.copies == (WrappedCopy("", KEY_ID, "wrapped-1"),)
    same = Opener(UsesSecondCopy(data_key, "key-eu"))
    assert same.open(sealed.body, header, META).key_id == "key-eu"
    spoofed = Opener(UsesSecondCopy(data_key, KEY_ID))
    with pytest.raises(KeyMismatchError) as caught:
        spoofed.open(sealed.body, header, META)
    assert (caught.value.claimed, caught.value.verified) == ("key-eu", KEY_ID)


def test_v1_cannot_carry_a_causation_id() -> None:
    meta = dataclasses.replace(META, causation_id="m-0")
    with pytest.raises(SealingError, match="causation"):
        Sealer(FixedKeys(), KEY_ID, CONTEXT).seal(b"x", meta)


def test_sealed_and_opened_messages_stay_frozen_dataclasses() -> None:
    from envelope_mq.shared.envelope import OpenedMessage, SealedMessage

    meta = MessageMeta("m-1", 1_700_000_000)
    sealed = SealedMessage(b"body", {"x-emq": b"v"}, meta)
    assert sealed == SealedMessage(b"body", {"x-emq": b"v"}, meta)
    assert dataclasses.replace(sealed, body=b"other").body == b"other"
    opened = OpenedMessage(b"secret", {}, "key", meta)
    assert "secret" not in repr(opened)
    assert (opened.plaintext, opened.key_id, opened.meta) == (b"secret", "key", meta)
    for message, name in ((sealed, "body"), (opened, "plaintext")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, name, b"x")
