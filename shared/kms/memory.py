"""Test doubles shipped with the library, for tests without a network or a wait.

:class:`InMemoryKeyProvider`: real AES-GCM key wrapping in memory.
:class:`ManualClock`: a clock that moves only when told, for everything that
takes a ``clock`` (the key caches' rotation and expiry, replay protection).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import threading
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from envelope_mq.shared.errors import KmsError, KmsRequestError
from envelope_mq.shared.kms.datakey import (
    DATA_KEY_SIZE,
    DataKey,
    UnwrappedKey,
    canonical_context,
    replay_error,
)

__all__ = ["InMemoryKeyProvider", "ManualClock"]


class ManualClock:
    """A monotonic clock for tests: ``clock()`` is ``now``, which moves on
    :meth:`advance` (or by assignment) only.

    ``DataKeyCache(provider, clock=clock)``, then ``clock.advance(300)``, and
    the next message gets a new data key without the test waiting 5 minutes.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now!r})"


class InMemoryKeyProvider:
    """A KeyProvider with master keys in memory, for tests without a network.

    Data keys are really wrapped (AES-GCM under a per-master-key key, bound to
    the key id and the context), so a wrong context or a foreign blob fails as
    KMS would, with ``KmsRequestError``. ``key_ids=None`` accepts any key id.
    ``fail_with`` makes the following calls fail until ``recover``.
    """

    def __init__(self, key_ids: Iterable[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._any_key = key_ids is None
        self._masters = {key_id: AESGCM.generate_key(256) for key_id in key_ids or ()}
        self._failure: KmsError | None = None
        self._failures_left: int | None = None
        self.generate_calls = 0
        self.decrypt_calls = 0
        self.wrap_calls = 0

    def fail_with(self, error: KmsError, *, times: int | None = None) -> None:
        """Fail the next ``times`` calls (every call when None) with ``error``."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failure, self._failures_left = error, times

    def recover(self) -> None:
        """Stop failing."""
        with self._lock:
            self._failure, self._failures_left = None, None

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Wrap a fresh random data key under ``key_id``."""
        with self._lock:
            self.generate_calls += 1
            self._check_failure()
            if key_id not in self._masters and self._any_key:
                self._masters[key_id] = AESGCM.generate_key(256)
            master = self._master(key_id, "GenerateDataKey")
        plaintext = os.urandom(DATA_KEY_SIZE)
        wrapped = _wrap(master, key_id, plaintext, context)
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_id=key_id)

    def wrap_data_key(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str]
    ) -> tuple[str, str]:
        """Wrap an existing data key under ``key_id`` too: (key id, blob).

        As KMS Encrypt does for a second region's copy; the blob opens with
        :meth:`decrypt_data_key` exactly as a generated one does.
        """
        if type(plaintext) is not bytes or len(plaintext) != DATA_KEY_SIZE:
            raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
        with self._lock:
            self.wrap_calls += 1
            self._check_failure()
            if key_id not in self._masters and self._any_key:
                self._masters[key_id] = AESGCM.generate_key(256)
            master = self._master(key_id, "Encrypt")
        return key_id, _wrap(master, key_id, plaintext, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Unwrap a blob from :meth:`generate_data_key` under the same context.

        The key id comes from the blob, as KMS's does: never from the caller.
        """
        with self._lock:
            self.decrypt_calls += 1
            self._check_failure()
        try:
            blob = base64.b64decode(wrapped, validate=True)
            (size,) = struct.unpack_from(">H", blob)
            if len(blob) < 2 + size + 12 + 16:  # head, nonce, GCM tag
                raise ValueError("blob too short")
            key_id = blob[2 : 2 + size].decode("utf-8")
        except (binascii.Error, ValueError, struct.error) as exc:
            raise _invalid_blob() from exc
        with self._lock:
            master = self._master(key_id, "Decrypt")
        head, nonce, sealed = (
            blob[: 2 + size],
            blob[2 + size : 14 + size],
            blob[14 + size :],
        )
        try:
            plaintext = AESGCM(master).decrypt(nonce, sealed, _aad(head, context))
        except (InvalidTag, ValueError) as exc:
            raise _invalid_blob() from exc
        return UnwrappedKey(plaintext, key_id)

    def describe_key_id(self, key: str) -> str:
        """The key id of ``key`` (no aliases here: a known id is its own)."""
        with self._lock:
            self._master(key, "DescribeKey")
        return key

    def _check_failure(self) -> None:
        if self._failure is None:
            return
        error = self._failure
        if self._failures_left is not None:
            self._failures_left -= 1
            if self._failures_left <= 0:
                self._failure, self._failures_left = None, None
        raise replay_error(error)

    def _master(self, key_id: str, action: str) -> bytes:
        try:
            return self._masters[key_id]
        except KeyError:
            raise KmsRequestError(
                f"KMS {action} failed: Forbidden.KeyNotFound (HTTP 404)",
                code="Forbidden.KeyNotFound",
                http_status=404,
            ) from None


def _wrap(
    master: bytes, key_id: str, plaintext: bytes, context: Mapping[str, str]
) -> str:
    nonce = os.urandom(12)
    head = _blob_head(key_id)
    sealed = AESGCM(master).encrypt(nonce, plaintext, _aad(head, context))
    return base64.b64encode(head + nonce + sealed).decode("ascii")


def _blob_head(key_id: str) -> bytes:
    raw = key_id.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _aad(head: bytes, context: Mapping[str, str]) -> bytes:
    return head + canonical_context(context).encode("utf-8")


def _invalid_blob() -> KmsRequestError:
    return KmsRequestError(
        "KMS Decrypt failed: InvalidParameter (HTTP 400)",
        code="InvalidParameter",
        http_status=400,
    )
