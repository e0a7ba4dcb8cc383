from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from envelope_mq.shared import crypto
from envelope_mq.shared.crypto import Aes256Gcm
from envelope_mq.shared.errors import DecryptionError

KEY = bytes(range(32))
NONCE = bytes(12)


def test_sealed_output_is_ciphertext_and_tag_that_opens_again() -> None:
    cipher = Aes256Gcm(KEY)
    sealed = cipher.seal(NONCE, b"attack at dawn", b"aad")
    assert len(sealed) == len(b"attack at dawn") + crypto.TAG_SIZE
    assert cipher.open(NONCE, sealed, b"aad") == b"attack at dawn"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s, a: (s[:-1] + bytes([s[-1] ^ 1]), a), id="tag"),
        pytest.param(lambda s, a: (bytes([s[0] ^ 0x80]) + s[1:], a), id="ciphertext"),
        pytest.param(lambda s, a: (s, a + b"x"), id="aad"),
        pytest.param(lambda s, a: (s[:-1], a), id="truncated"),
    ],
)
def test_tampering_is_rejected_with_decryption_error(
    damage: Callable[[bytes, bytes], tuple[bytes, bytes]],
) -> None:
    cipher = Aes256Gcm(KEY)
    sealed, aad = damage(cipher.seal(NONCE, b"payload", b"aad"), b"aad")
    with pytest.raises(DecryptionError) as caught:
        cipher.open(NONCE, sealed, aad)
    assert str(caught.value) == DecryptionError.MESSAGE
    assert isinstance(caught.value.__cause__, InvalidTag)


def test_wrong_key_or_nonce_is_rejected() -> None:
    sealed = Aes256Gcm(KEY).seal(NONCE, b"payload", b"")
    with pytest.raises(DecryptionError):
        Aes256Gcm(os.urandom(32)).open(NONCE, sealed, b"")
    with pytest.raises(DecryptionError):
        Aes256Gcm(KEY).open(b"\x01" + NONCE[1:], sealed, b"")


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(24), bytes(31), bytes(33)])
def test_keys_that_are_not_256_bits_are_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Aes256Gcm(key)


def test_key_must_be_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Aes256Gcm(bytearray(32))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 8, 11, 13, 16])
def test_nonces_that_are_not_96_bits_are_refused(size: int) -> None:
    cipher = Aes256Gcm(KEY)
    with pytest.raises(ValueError, match="12 bytes"):
        cipher.seal(bytes(size), b"payload", b"")
    with pytest.raises(ValueError, match="12 bytes"):
        cipher.open(bytes(size), bytes(32), b"")


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(Aes256Gcm(KEY))
    assert repr(KEY) not in repr(Aes256Gcm(KEY))
