"""KMS calls counted and timed at the KeyProvider boundary.

:class:`InstrumentedKeyProvider` wraps any provider (AliyunKms, the in-memory
one, a fake), so the KMS client itself knows nothing of metrics. Only cache
misses reach a provider, so timing every call costs nothing per message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from envelope_mq.shared.errors import KmsRequestError, KmsUnavailableError
from envelope_mq.shared.kms import DataKey, KeyProvider, UnwrappedKey

__all__ = [
    "GENERATE_DATA_KEY",
    "KMS_DECRYPT",
    "OUTCOMES",
    "InstrumentedKeyProvider",
    "KmsCallRecorder",
]

# Label values: the KMS action names, as an operator sees them in KMS audit logs.
GENERATE_DATA_KEY = "GenerateDataKey"
KMS_DECRYPT = "Decrypt"
# ok: KMS answered with a key; rejected: KMS answered no (KmsRequestError);
# unavailable: no answer (KmsUnavailableError); error: anything else.
OUTCOMES = ("ok", "rejected", "unavailable", "error")


class KmsCallRecorder(Protocol):
    """Where the outcome of each KMS call goes (``Metrics`` is one)."""

    def kms_call(self, operation: str, outcome: str, seconds: float) -> None:
        """Record one call of ``operation`` that ended with ``outcome``."""
        ...


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, KmsRequestError):
        return "rejected"
    if isinstance(error, KmsUnavailableError):
        return "unavailable"
    return "error"


class InstrumentedKeyProvider:
    """A KeyProvider that reports every call's operation, outcome and latency."""

    def __init__(self, provider: KeyProvider, recorder: KmsCallRecorder) -> None:
        self._provider = provider
        self._recorder = recorder

    def __repr__(self) -> str:
        return f"InstrumentedKeyProvider({self._provider!r})"

    @property
    def provider(self) -> KeyProvider:
        """The wrapped provider."""
        return self._provider

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """GenerateDataKey through the wrapped provider, recorded."""
        start = time.perf_counter()
        try:
            data_key = self._provider.generate_data_key(key_id, context)
        except BaseException as exc:
            self._record(GENERATE_DATA_KEY, exc, start)
            raise
        self._record(GENERATE_DATA_KEY, None, start)
        return data_key

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Decrypt through the wrapped provider, recorded."""
        start = time.perf_counter()
        try:
            unwrapped = self._provider.decrypt_data_key(wrapped, context)
        except BaseException as exc:
            self._record(KMS_DECRYPT, exc, start)
            raise
        self._record(KMS_DECRYPT, None, start)
        return unwrapped

    def _record(
        self, operation: str, error: BaseException | None, start: float
    ) -> None:
        self._recorder.kms_call(operation, _outcome(error), time.perf_counter() - start)
