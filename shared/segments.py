"""The segment cipher of sealed files: STREAM over AES-256-GCM, pure crypto, no I/O.

A sealed file (docs/file-format.md) is cut into fixed-size segments, each sealed
on its own, as in Tink's streaming AEAD and age. Each file gets its own key,
derived with HKDF-SHA256 from the KMS data key and a random per-file salt, so a
(key, nonce) pair never repeats across files even when a data key is reused. The
nonce of segment ``i`` is ``prefix(7) ‖ uint32_be(i) ‖ last(1)``: the counter
makes reordering, dropping and duplicating segments fail, and the last-segment
flag makes truncation and appending fail. Every segment's associated data is
the SHA-256 of the file header, so the header cannot be changed either.

This module takes buffers (``memoryview``, ``bytearray``) as well as bytes, so
the stream layer can seal straight out of a reused read buffer without copies.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from envelope_mq.shared.crypto import KEY_SIZE, TAG_SIZE
from envelope_mq.shared.errors import DecryptionError, SealingError

__all__ = [
    "HKDF_INFO",
    "MAX_SEGMENTS",
    "NONCE_PREFIX_SIZE",
    "SALT_SIZE",
    "TAG_SIZE",
    "BytesLike",
    "SegmentCipher",
    "derive_file_key",
    "header_digest",
    "new_salt_and_prefix",
    "segment_nonce",
]

SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
# The counter is 32 bits wide; one more segment would repeat a nonce.
MAX_SEGMENTS = 2**32
HKDF_INFO = b"envelope-mq sealed file v1 AES-256-GCM segment key"

_NONCE = struct.Struct(">7sIB")

# What AESGCM accepts: a reused read buffer is sealed without a copy.
BytesLike: TypeAlias = bytes | bytearray | memoryview


def derive_file_key(data_key: bytes, salt: bytes) -> bytes:
    """HKDF-SHA256(IKM=data key, salt, info=HKDF_INFO) -> the 32-byte file key."""
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"a data key is {KEY_SIZE} bytes")
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a file salt is {SALT_SIZE} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=HKDF_INFO)
    return hkdf.derive(data_key)


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """The 12-byte nonce of segment ``index``: prefix ‖ uint32_be(index) ‖ last."""
    return _NONCE.pack(prefix, index, 1 if last else 0)


def header_digest(header: bytes) -> bytes:
    """SHA-256 of the encoded header: every segment's associated data."""
    return hashlib.sha256(header).digest()


def new_salt_and_prefix() -> tuple[bytes, bytes]:
    """A fresh random (salt, nonce prefix) for one file."""
    return os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE)


class SegmentCipher:
    """Seals and opens the segments of one file.

    Callers go through the segments in order, ``index`` 0, 1, 2...; exactly one
    segment, the last, is sealed and opened with ``last=True``.
    """

    __slots__ = ("_aad", "_aead", "_prefix")

    def __init__(
        self, data_key: bytes, salt: bytes, nonce_prefix: bytes, header: bytes
    ) -> None:
        if len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"a nonce prefix is {NONCE_PREFIX_SIZE} bytes")
        self._aead = AESGCM(derive_file_key(data_key, salt))
        self._prefix = nonce_prefix
        self._aad = header_digest(header)

    def __repr__(self) -> str:
        return "SegmentCipher(<key hidden>)"

    def seal(self, index: int, plaintext: BytesLike, *, last: bool) -> bytes:
        """Return ciphertext ‖ tag of segment ``index``.

        Raises:
            SealingError: the file has more segments than the counter can number.
        """
        if not 0 <= index < MAX_SEGMENTS:
            raise SealingError("file too large: the segment counter is exhausted")
        nonce = segment_nonce(self._prefix, index, last)
        return self._aead.encrypt(nonce, plaintext, self._aad)

    def open(self, index: int, sealed: BytesLike, *, last: bool) -> bytes:
        """Authenticate and decrypt segment ``index``.

        Raises:
            DecryptionError: wrong key, header, position or last-segment flag,
                or a segment altered, cut short or out of place.
        """
        if not 0 <= index < MAX_SEGMENTS:
            raise DecryptionError() from ValueError("segment counter exhausted")
        nonce = segment_nonce(self._prefix, index, last)
        try:
            return self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag as exc:
            raise DecryptionError() from exc
