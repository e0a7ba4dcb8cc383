"""Sealed files over streams: round trips, layout, and the header checks."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import pytest
from envelope_mq.shared.errors import DecryptionError, KeyMismatchError, SealingError
from envelope_mq.shared.kms import DataKey, InMemoryKeyProvider, UnwrappedKey
from envelope_mq.shared.sealed_file import (
    MAGIC,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    FileHeader,
    read_header,
    seal_stream,
    seal_with_key,
    unseal_stream,
    unseal_with_key,
)
from envelope_mq.shared.segments import TAG_SIZE
from hypothesis import given, settings
from hypothesis import strategies as st

SEG = MIN_SEGMENT_SIZE
CONTEXT = {"purpose": "tests", "ünï": "cödé"}


class Trickle(io.RawIOBase):
    """A source that hands out at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        target = memoryview(buffer)  # type: ignore[arg-type]
        count = min(self._step, len(target), len(self._data))
        target[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider(["master"])


def seal(provider: InMemoryKeyProvider, data: bytes, segment_size: int = SEG) -> bytes:
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(data), out, provider, "master", CONTEXT, segment_size=segment_size
    )
    return out.getvalue()


def unseal(provider: InMemoryKeyProvider, sealed: bytes) -> bytes:
    out = io.BytesIO()
    unseal_stream(io.BytesIO(sealed), out, provider)
    return out.getvalue()


@pytest.mark.parametrize(
    "size",
    [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG - 1, 2 * SEG, 2 * SEG + 1, 5 * SEG + 17],
)
def test_round_trip_at_segment_boundaries(
    provider: InMemoryKeyProvider, size: int
) -> None:
    data = os.urandom(size)
    assert unseal(provider, seal(provider, data)) == data


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
def test_sealed_size_is_header_plus_full_segments_plus_a_short_last_one(
    provider: InMemoryKeyProvider, size: int
) -> None:
    sealed = seal(provider, os.urandom(size))
    header = read_header(io.BytesIO(sealed))
    full, rest = divmod(size, SEG)
    body = full * (SEG + TAG_SIZE) + rest + TAG_SIZE
    assert len(sealed) == len(header.encoded) + body


def test_empty_file_is_the_header_and_one_empty_final_segment(
    provider: InMemoryKeyProvider,
) -> None:
    sealed = seal(provider, b"")
    header = read_header(io.BytesIO(sealed))
    assert len(sealed) == len(header.encoded) + TAG_SIZE


def test_header_records_key_id_wrapped_key_context_and_segment_size(
    provider: InMemoryKeyProvider,
) -> None:
    out = io.BytesIO()
    written = seal_stream(io.BytesIO(b"abc"), out, provider, "master", CONTEXT)
    header = read_header(io.BytesIO(out.getvalue()))
    assert out.getvalue().startswith(MAGIC)
    assert header == written
    assert header.key_id == "master"
    assert header.context == CONTEXT
    assert provider.decrypt_data_key(header.wrapped_key, CONTEXT)  # KMS's own blob


def test_each_file_gets_a_fresh_salt_and_nonce_prefix(
    provider: InMemoryKeyProvider,
) -> None:
    key = provider.generate_data_key("master", {})
    first = seal_with_key(io.BytesIO(b"same"), io.BytesIO(), key)
    second = seal_with_key(io.BytesIO(b"same"), io.BytesIO(), key)
    assert first.salt != second.salt
    assert first.nonce_prefix != second.nonce_prefix


def test_round_trip_through_short_reads(provider: InMemoryKeyProvider) -> None:
    data = os.urandom(3 * SEG + 5)
    sealed = io.BytesIO()
    seal_stream(Trickle(data, 999), sealed, provider, "master", segment_size=SEG)
    out = io.BytesIO()
    unseal_stream(Trickle(sealed.getvalue(), 777), out, provider)
    assert out.getvalue() == data


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=3 * SEG + 10), segment_size=st.sampled_from([SEG, SEG + 3])
)
def test_round_trip_of_arbitrary_payloads(data: bytes, segment_size: int) -> None:
    provider = InMemoryKeyProvider(["master"])
    assert unseal(provider, seal(provider, data, segment_size)) == data


def test_with_key_functions_round_trip_without_kms(
    provider: InMemoryKeyProvider,
) -> None:
    key = provider.generate_data_key("master", CONTEXT)
    sealed = io.BytesIO()
    seal_with_key(io.BytesIO(b"hello"), sealed, key, CONTEXT)
    src = io.BytesIO(sealed.getvalue())
    header = read_header(src)
    out = io.BytesIO()
    assert unseal_with_key(src, out, header, key.plaintext) == 5
    assert out.getvalue() == b"hello"


def test_unseal_with_another_data_key_fails(provider: InMemoryKeyProvider) -> None:
    key = provider.generate_data_key("master", {})
    other = provider.generate_data_key("master", {})
    sealed = io.BytesIO()
    seal_with_key(io.BytesIO(b"hello"), sealed, key)
    src = io.BytesIO(sealed.getvalue())
    header = read_header(src)
    with pytest.raises(DecryptionError):
        unseal_with_key(src, io.BytesIO(), header, other.plaintext)


@pytest.mark.parametrize("size", [MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1])
def test_segment_size_out_of_bounds_cannot_seal(
    provider: InMemoryKeyProvider, size: int
) -> None:
    with pytest.raises(SealingError):
        seal(provider, b"x", segment_size=size)
    assert provider.generate_calls == 0


def test_context_that_is_not_str_to_str_is_refused_before_kms(
    provider: InMemoryKeyProvider,
) -> None:
    with pytest.raises(SealingError):
        seal_stream(io.BytesIO(b"x"), io.BytesIO(), provider, "master", {"n": 1})  # type: ignore[dict-item]
    assert provider.generate_calls == 0


@pytest.mark.parametrize(
    ("key_id", "wrapped"),
    [("k" * 2000, "blob"), ("", "blob"), ("k", ""), ("k", "blöb")],
    ids=["key id too long", "empty key id", "empty wrapped key", "non-ASCII blob"],
)
def test_a_header_no_reader_would_accept_is_never_written(
    key_id: str, wrapped: str
) -> None:
    key = DataKey(plaintext=bytes(32), wrapped=wrapped, key_id=key_id)
    out = io.BytesIO()
    with pytest.raises(SealingError):
        seal_with_key(io.BytesIO(b"x"), out, key)
    assert out.getvalue() == b""


def test_header_repr_shows_no_salt_or_raw_bytes(provider: InMemoryKeyProvider) -> None:
    header: FileHeader = seal_stream(io.BytesIO(b""), io.BytesIO(), provider, "master")
    assert header.salt.hex() not in repr(header)
    assert "encoded" not in repr(header)


@pytest.mark.parametrize(
    "data",
    [b"", b"EMQSEAL", MAGIC, b"not a sealed file at all" * 10, os.urandom(200)],
)
def test_input_that_is_not_a_sealed_file_is_rejected(
    provider: InMemoryKeyProvider, data: bytes
) -> None:
    with pytest.raises(DecryptionError):
        unseal(provider, data)
    assert provider.decrypt_calls == 0


class Claiming:
    """A KMS client that holds key-a and writes key-b into the header it seals."""

    def __init__(self, provider: InMemoryKeyProvider) -> None:
        self.provider = provider

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        real = self.provider.generate_data_key("key-a", context)
        return DataKey(real.plaintext, real.wrapped, "key-b")

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        return self.provider.decrypt_data_key(wrapped, context)


def test_a_file_whose_header_names_another_key_than_kms_used_is_refused() -> None:
    provider = InMemoryKeyProvider(["key-a", "key-b"])
    sealed = io.BytesIO()
    seal_stream(io.BytesIO(b"secret"), sealed, Claiming(provider), "key-b")
    sealed.seek(0)
    out = io.BytesIO()
    with pytest.raises(KeyMismatchError):
        unseal_stream(sealed, out, provider)
    assert out.getvalue() == b""


@pytest.mark.parametrize(("expected", "opens"), [({"key-a"}, True), ({"k"}, False)])
def test_unseal_accepts_only_the_expected_keys(expected: set[str], opens: bool) -> None:
    provider = InMemoryKeyProvider(["key-a"])
    sealed = io.BytesIO()
    seal_stream(io.BytesIO(b"secret"), sealed, provider, "key-a")
    sealed.seek(0)
    out = io.BytesIO()
    if opens:
        unseal_stream(sealed, out, provider, expected_key_ids=expected)
        assert out.getvalue() == b"secret"
    else:
        with pytest.raises(DecryptionError):
            unseal_stream(sealed, out, provider, expected_key_ids=expected)
        assert out.getvalue() == b""
