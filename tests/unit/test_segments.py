"""The segment cipher: nonce layout, per-file keys, and what each input binds."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from envelope_mq.shared.errors import DecryptionError, SealingError
from envelope_mq.shared.segments import (
    HKDF_INFO,
    MAX_SEGMENTS,
    NONCE_PREFIX_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    SegmentCipher,
    derive_file_key,
    header_digest,
    segment_nonce,
)

KEY = bytes(range(32))
SALT = bytes(range(100, 100 + SALT_SIZE))
PREFIX = b"\x01\x02\x03\x04\x05\x06\x07"
HEADER = b"a header"


def cipher(
    header: bytes = HEADER, salt: bytes = SALT, key: bytes = KEY
) -> SegmentCipher:
    return SegmentCipher(key, salt, PREFIX, header)


def test_nonce_is_prefix_then_big_endian_counter_then_last_flag() -> None:
    assert (
        segment_nonce(PREFIX, 0x01020304, last=False)
        == PREFIX + b"\x01\x02\x03\x04\x00"
    )
    assert segment_nonce(PREFIX, 0, last=True) == PREFIX + b"\x00\x00\x00\x00\x01"


def test_file_key_is_hkdf_sha256_of_the_data_key_under_the_salt() -> None:
    expected = HKDF(hashes.SHA256(), 32, salt=SALT, info=HKDF_INFO).derive(KEY)
    assert derive_file_key(KEY, SALT) == expected
    assert derive_file_key(KEY, bytes(SALT_SIZE)) != expected


def test_segment_is_aes_gcm_under_file_key_with_header_digest_as_aad() -> None:
    sealed = cipher().seal(5, b"payload", last=False)
    aead = AESGCM(derive_file_key(KEY, SALT))
    nonce = segment_nonce(PREFIX, 5, last=False)
    assert aead.decrypt(nonce, sealed, header_digest(HEADER)) == b"payload"
    assert len(sealed) == len(b"payload") + TAG_SIZE


def test_round_trip_accepts_memoryview_input() -> None:
    data = bytearray(os.urandom(1000))
    sealed = cipher().seal(0, memoryview(data)[:600], last=True)
    assert cipher().open(0, memoryview(bytearray(sealed)), last=True) == data[:600]


def test_segment_opened_at_another_index_is_rejected() -> None:
    sealed = cipher().seal(1, b"x" * 64, last=False)
    with pytest.raises(DecryptionError):
        cipher().open(2, sealed, last=False)


@pytest.mark.parametrize("sealed_last", [True, False])
def test_segment_opened_with_the_other_last_flag_is_rejected(sealed_last: bool) -> None:
    sealed = cipher().seal(0, b"x" * 64, last=sealed_last)
    with pytest.raises(DecryptionError):
        cipher().open(0, sealed, last=not sealed_last)


def test_segment_opened_under_another_header_is_rejected() -> None:
    sealed = cipher().seal(0, b"x", last=True)
    with pytest.raises(DecryptionError):
        cipher(header=HEADER + b"!").open(0, sealed, last=True)


def test_segment_opened_under_another_salt_is_rejected() -> None:
    sealed = cipher().seal(0, b"x", last=True)
    with pytest.raises(DecryptionError):
        cipher(salt=bytes(SALT_SIZE)).open(0, sealed, last=True)


def test_segment_shorter_than_a_tag_is_rejected() -> None:
    with pytest.raises(DecryptionError):
        cipher().open(0, b"\x00" * (TAG_SIZE - 1), last=True)


def test_counter_beyond_32_bits_cannot_seal() -> None:
    with pytest.raises(SealingError):
        cipher().seal(MAX_SEGMENTS, b"", last=True)


def test_counter_beyond_32_bits_cannot_open() -> None:
    with pytest.raises(DecryptionError):
        cipher().open(MAX_SEGMENTS, b"\x00" * TAG_SIZE, last=True)


@pytest.mark.parametrize(
    ("key", "salt", "prefix"),
    [
        (KEY[:16], SALT, PREFIX),
        (KEY, SALT[:16], PREFIX),
        (KEY, SALT, PREFIX + b"\x00"),
    ],
)
def test_wrong_sized_inputs_are_caller_bugs(
    key: bytes, salt: bytes, prefix: bytes
) -> None:
    with pytest.raises(ValueError, match="bytes"):
        SegmentCipher(key, salt, prefix, HEADER)


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(cipher())
    assert repr(cipher()) == "SegmentCipher(<key hidden>)"


def test_nonce_prefix_size_matches_the_nonce() -> None:
    assert len(segment_nonce(b"\x00" * NONCE_PREFIX_SIZE, 0, last=False)) == 12
