"""The data key and the KeyProvider port.

The canonical EncryptionContext is the wire format's own (one definition, so the
context KMS binds and the context our AAD binds can never drift apart)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from envelope_mq.shared.errors import KmsCallerError, KmsError
from envelope_mq.shared.wire import canonical_context

__all__ = [
    "DATA_KEY_SIZE",
    "DataKey",
    "KeyProvider",
    "UnwrappedKey",
    "WrappedCopy",
    "canonical_context",
    "local_copy",
    "replay_error",
]

DATA_KEY_SIZE = 32  # AES-256


@dataclass(frozen=True)
class WrappedCopy:
    """One KMS-wrapped copy of a data key: where, under which master key, what.

    ``region`` names the KMS the copy was wrapped by, as the reader's
    configuration knows it; ``""`` is the reader's default KMS. ``blob`` is
    the CiphertextBlob text exactly as KMS returned it. Nothing here is secret.
    """

    region: str
    key_id: str
    blob: str


@dataclass(frozen=True)
class DataKey:
    """A 256-bit data key and its KMS-wrapped form(s); the repr hides the key.

    ``wrapped``/``key_id``/``region`` are the primary copy (from
    GenerateDataKey); ``extra`` holds copies of the same plaintext key wrapped
    by other master keys or KMS regions (Encrypt), in the writer's order.
    """

    plaintext: bytes = field(repr=False)
    wrapped: str  # CiphertextBlob exactly as KMS returned it
    key_id: str  # master KeyId as GenerateDataKey returned it
    region: str = ""  # the KMS that made it; "" is the default one
    extra: tuple[WrappedCopy, ...] = ()

    def __post_init__(self) -> None:
        if type(self.plaintext) is not bytes or len(self.plaintext) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        if type(self.extra) is not tuple or not all(
            type(copy) is WrappedCopy for copy in self.extra
        ):
            raise ValueError("extra copies are a tuple of WrappedCopy")

    @property
    def copies(self) -> tuple[WrappedCopy, ...]:
        """Every wrapped copy, the primary first."""
        return (WrappedCopy(self.region, self.key_id, self.wrapped), *self.extra)


def local_copy(copies: Sequence[WrappedCopy]) -> WrappedCopy:
    """The copy a single-KMS reader unwraps: region "" if any, else the first.

    Raises:
        ValueError: there is no copy at all.
    """
    if not copies:
        raise ValueError("no wrapped copy of the data key")
    for copy in copies:
        if copy.region == "":
            return copy
    return copies[0]


@dataclass(frozen=True)
class UnwrappedKey:
    """What Decrypt gives back: the data key, and the master key KMS used.

    ``key_id`` is KMS's own answer (the KeyId of Decrypt's response), not
    anything the message claimed: it is the only sender identity a reader can
    trust. The repr hides the key.
    """

    plaintext: bytes = field(repr=False)
    key_id: str

    def __post_init__(self) -> None:
        if type(self.plaintext) is not bytes or len(self.plaintext) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        if type(self.key_id) is not str or not self.key_id:
            raise ValueError("an unwrapped key names its master key")


class KeyProvider(Protocol):
    """Where data keys come from and go back to be unwrapped."""

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Return a fresh data key wrapped under master key ``key_id``."""
        ...

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Return the plaintext of a wrapped data key and the KeyId KMS reported."""
        ...


def replay_error(error: KmsError) -> KmsError:
    """A fresh copy of ``error`` (same type, text and codes) to raise again.

    Raising one exception object over and over grows its traceback; caches
    and fakes that report a remembered failure raise a copy instead.
    """
    copy = type(error)(
        str(error),
        code=error.code,
        request_id=error.request_id,
        http_status=error.http_status,
    )
    if isinstance(error, KmsCallerError) and isinstance(copy, KmsCallerError):
        copy.cause = error.cause
    return copy
