"""AES-256-GCM, the sharp layer: the caller supplies key, nonce and associated data.

Nothing here chooses a nonce or a key; :mod:`~envelope_mq.shared.envelope` is the
recipe that
does. ``InvalidTag`` never leaves this module: a failed open is a
:class:`DecryptionError` (chained). Wrong-sized keys or nonces are caller bugs
and raise ``ValueError``, as ``cryptography`` itself does; the recipe checks
sizes before it gets here.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from envelope_mq.shared.errors import DecryptionError, SealingError

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "OVERHEAD",
    "TAG_SIZE",
    "Aes256Gcm",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


class Aes256Gcm:
    """AES-256-GCM under one key, built once and reused for every message.

    Building ``AESGCM`` costs about as much as sealing a small message, so the
    envelope layer keeps one of these per data key.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if type(key) is not bytes or len(key) != KEY_SIZE:
            raise ValueError(f"an AES-256-GCM key is {KEY_SIZE} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Aes256Gcm(<key hidden>)"

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Return ciphertext ‖ 16-byte tag.

        Raises:
            SealingError: the plaintext or associated data is too long for GCM.
        """
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"an AES-256-GCM nonce is {NONCE_SIZE} bytes")
        try:
            return self._aead.encrypt(nonce, plaintext, aad)
        except OverflowError as exc:
            raise SealingError("message too large to seal") from exc

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Authenticate and decrypt ciphertext ‖ tag.

        Raises:
            DecryptionError: the tag does not verify under this key, nonce and aad.
        """
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"an AES-256-GCM nonce is {NONCE_SIZE} bytes")
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except (InvalidTag, OverflowError) as exc:
            raise DecryptionError() from exc
