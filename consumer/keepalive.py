"""Keep the broker connection serviced while a KMS call is in flight.

pika's BlockingConnection answers heartbeats only while its thread is inside
pika. A KMS Decrypt on a cache miss can take many seconds when KMS is slow or
unreachable (connect and read timeouts, retries), long enough for the broker to
drop a silent connection. :class:`KeepAliveProvider` runs each KMS call in a
helper thread and lets the consumer's thread pump the connection meanwhile.
Only cache misses pay the hand-off; hits never reach a provider.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from envelope_mq.shared.kms import DataKey, KeyProvider, UnwrappedKey

__all__ = ["KeepAliveProvider"]

# How long one wait for KMS lasts before the connection is serviced again.
_PUMP_SECONDS = 0.05


class KeepAliveProvider:
    """A KeyProvider that services the broker connection while KMS answers.

    Without an attached ``waiter`` it simply calls ``provider``. The consumer
    attaches its connection's event pump for as long as it runs.
    """

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._waiter: Callable[[float], None] | None = None
        self._owner: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"KeepAliveProvider({self._provider!r})"

    def attach(self, waiter: Callable[[float], None] | None) -> None:
        """Pump with ``waiter(seconds)`` from now on (None: stop pumping)."""
        self._waiter = waiter
        # The pump belongs to the connection's thread; other threads just wait.
        self._owner = threading.current_thread() if waiter is not None else None
        if waiter is None and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Pass through: the consumer never generates data keys."""
        return self._provider.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Unwrap through the provider, servicing the connection meanwhile."""
        return self.unwrap_with(self._provider, wrapped, context)

    def sharing(self, provider: KeyProvider) -> KeyProvider:
        """Another provider (another KMS region) kept alive by this one's pump."""
        return _Sibling(self, provider)

    def unwrap_with(
        self, provider: KeyProvider, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """``provider.decrypt_data_key``, servicing the connection meanwhile."""
        waiter = self._waiter
        if waiter is None or threading.current_thread() is not self._owner:
            return provider.decrypt_data_key(wrapped, context)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="emq-kms")
        future = self._executor.submit(provider.decrypt_data_key, wrapped, context)
        while not future.done():
            waiter(_PUMP_SECONDS)
        return future.result()


class _Sibling:
    """A provider whose Decrypt calls go through another's keep-alive pump."""

    def __init__(self, keeper: KeepAliveProvider, provider: KeyProvider) -> None:
        self._keeper = keeper
        self._provider = provider

    def __repr__(self) -> str:
        return f"KeepAliveProvider({self._provider!r})"

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self._provider.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        return self._keeper.unwrap_with(self._provider, wrapped, context)
