"""The data key, the KeyProvider port, and the canonical EncryptionContext."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import KmsError

__all__ = [
    "DATA_KEY_SIZE",
    "DataKey",
    "KeyProvider",
    "canonical_context",
    "replay_error",
]

DATA_KEY_SIZE = 32  # AES-256


@dataclass(frozen=True)
class DataKey:
    """A 256-bit data key and its KMS-wrapped form; the repr hides the key."""

    plaintext: bytes = field(repr=False)
    wrapped: str  # CiphertextBlob exactly as KMS returned it
    key_id: str  # master KeyId as GenerateDataKey returned it

    def __post_init__(self) -> None:
        if type(self.plaintext) is not bytes or len(self.plaintext) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")


class KeyProvider(Protocol):
    """Where data keys come from and go back to be unwrapped."""

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Return a fresh data key wrapped under master key ``key_id``."""
        ...

    def decrypt_data_key(self, wrapped: str, context: Mapping[str, str]) -> bytes:
        """Return the 32-byte plaintext of a wrapped data key."""
        ...


def canonical_context(context: Mapping[str, str]) -> str:
    """The EncryptionContext as canonical JSON: keys sorted, no whitespace, UTF-8."""
    return json.dumps(
        dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def replay_error(error: KmsError) -> KmsError:
    """A fresh copy of ``error`` (same type, text and codes) to raise again.

    Raising one exception object over and over grows its traceback; caches
    and fakes that report a remembered failure raise a copy instead.
    """
    return type(error)(
        str(error),
        code=error.code,
        request_id=error.request_id,
        http_status=error.http_status,
    )
