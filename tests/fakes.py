"""The test fakes our unit tests share, in one place (cosmicpython's fakes.py).

The ones users need too ship with the library beside InMemoryKeyProvider:
``envelope_mq.shared.kms.ManualClock`` (re-exported here as ``Clock``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from envelope_mq.shared.kms import (
    DataKey,
    InMemoryKeyProvider,
    UnwrappedKey,
    WrappedCopy,
    local_copy,
)
from envelope_mq.shared.kms import ManualClock as Clock

__all__ = [
    "BlockingDecryptProvider",
    "ClaimingSource",
    "Clock",
    "FreshKeySource",
    "GatedProvider",
    "OneKeySource",
    "ProviderUnwrapper",
    "SlowRecordingProvider",
]


class FreshKeySource:
    """A DataKeySource asking the provider for a new data key every message."""

    def __init__(self, provider: InMemoryKeyProvider) -> None:
        self.provider = provider

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.provider.generate_data_key(key_id, context)


class OneKeySource:
    """A DataKeySource that generates one data key per context and keeps it."""

    def __init__(self, provider: InMemoryKeyProvider) -> None:
        self.provider = provider
        self.keys: dict[str, DataKey] = {}

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        slot = repr(sorted(context.items()))
        if slot not in self.keys:
            self.keys[slot] = self.provider.generate_data_key(key_id, context)
        return self.keys[slot]


class ClaimingSource:
    """A producer holding one master key that writes another's id in the header.

    The data key is really generated under ``provider``'s key ``held``; only
    the ``key_id`` the Sealer writes (and binds into the tag) is ``claimed``.
    """

    def __init__(self, provider: InMemoryKeyProvider, held: str, claimed: str) -> None:
        self.provider, self.held, self.claimed = provider, held, claimed

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        real = self.provider.generate_data_key(self.held, context)
        return DataKey(real.plaintext, real.wrapped, self.claimed)


class ProviderUnwrapper:
    """A KeyUnwrapper straight over the provider: every open is a KMS call."""

    def __init__(self, provider: InMemoryKeyProvider) -> None:
        self.provider = provider

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> UnwrappedKey:
        return self.provider.decrypt_data_key(wrapped, context)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        copy = local_copy(copies)
        return copy, self.unwrap(copy.blob, context)


class GatedProvider:
    """InMemoryKeyProvider whose calls wait until the test opens the gate."""

    def __init__(self) -> None:
        self.inner = InMemoryKeyProvider()
        self.gate = threading.Event()

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        self.gate.wait(timeout=30)
        return self.inner.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        self.gate.wait(timeout=30)
        return self.inner.decrypt_data_key(wrapped, context)


class BlockingDecryptProvider:
    """Decrypt blocks until the gate opens, then answers a fixed key (or
    raises ``error``); records the threads it ran on. Generates nothing."""

    def __init__(self, error: Exception | None = None) -> None:
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []
        self.error = error

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        raise NotImplementedError

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        self.threads.append(threading.current_thread())
        assert self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return UnwrappedKey(b"k" * 32, "k")


class SlowRecordingProvider:
    """InMemoryKeyProvider that notes which threads called it, and is slow."""

    def __init__(self, *key_ids: str) -> None:
        self.inner = InMemoryKeyProvider(key_ids or None)
        self.threads: list[threading.Thread] = []

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        self.threads.append(threading.current_thread())
        time.sleep(0.05)  # long enough for every task to miss at once
        return self.inner.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        self.threads.append(threading.current_thread())
        time.sleep(0.05)
        return self.inner.decrypt_data_key(wrapped, context)
