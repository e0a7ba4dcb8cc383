"""The CiphertextBlob: its layout and the AES-GCM sealing inside it.

    base64( KeyVersionId, 36 ASCII bytes ‖ IV, 12 bytes ‖ AES-GCM ciphertext ‖ tag )

the layout of the real service (Alibaba's transfer clients split it at 36 and 48).
The associated data is the KeyVersionId followed by the canonical EncryptionContext,
so neither the header nor the context can be swapped.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from envelope_mq.kms_emulator.errors import ApiError

__all__ = ["IV_LEN", "TAG_LEN", "VERSION_ID_LEN", "open_blob", "seal", "split"]

VERSION_ID_LEN = 36
IV_LEN = 12
TAG_LEN = 16
_MIN_LEN = VERSION_ID_LEN + IV_LEN + TAG_LEN


def undecryptable() -> ApiError:
    """The one answer for a corrupt or foreign blob or a wrong context."""
    return ApiError(
        400,
        "InvalidParameter",
        'The specified parameter "CiphertextBlob" is not valid. It cannot be '
        "decrypted: it is corrupt, foreign, or the EncryptionContext differs.",
    )


def seal(aead: AESGCM, version_id: str, plaintext: bytes, context: bytes) -> str:
    """Encrypt ``plaintext`` under one key version into a CiphertextBlob."""
    header = version_id.encode("ascii")
    iv = os.urandom(IV_LEN)
    sealed = aead.encrypt(iv, plaintext, header + context)
    return base64.b64encode(header + iv + sealed).decode("ascii")


def split(blob: str) -> tuple[str, bytes]:
    """The KeyVersionId a blob names, and the raw blob bytes."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise undecryptable() from exc
    if len(raw) < _MIN_LEN:
        raise undecryptable()
    try:
        version_id = raw[:VERSION_ID_LEN].decode("ascii")
    except UnicodeDecodeError as exc:
        raise undecryptable() from exc
    return version_id, raw


def open_blob(aead: AESGCM, raw: bytes, context: bytes) -> bytes:
    """Decrypt the raw bytes of a blob already matched to its key version."""
    header = raw[:VERSION_ID_LEN]
    iv = raw[VERSION_ID_LEN : VERSION_ID_LEN + IV_LEN]
    try:
        return aead.decrypt(iv, raw[VERSION_ID_LEN + IV_LEN :], header + context)
    except InvalidTag as exc:
        raise undecryptable() from exc
