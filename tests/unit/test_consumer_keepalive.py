"""KeepAliveProvider: the connection is pumped while a KMS call is in flight."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.kms import DataKey, InMemoryKeyProvider, UnwrappedKey


class GatedProvider:
    """Decrypt blocks until the gate opens; records the thread it ran on."""

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


def test_connection_is_pumped_until_kms_answers() -> None:
    provider = GatedProvider()
    keep_alive = KeepAliveProvider(provider)
    pumps: list[float] = []

    def pump(seconds: float) -> None:
        pumps.append(seconds)
        if len(pumps) == 5:
            provider.gate.set()

    keep_alive.attach(pump)
    try:
        assert keep_alive.decrypt_data_key("wrapped", {}).plaintext == b"k" * 32
    finally:
        keep_alive.attach(None)
    assert len(pumps) >= 5
    assert provider.threads[0] is not threading.current_thread()


def test_kms_errors_reach_the_caller_unchanged() -> None:
    refusal = KmsRequestError("no", code="Forbidden.NoPermission")
    provider = GatedProvider(error=refusal)
    provider.gate.set()
    keep_alive = KeepAliveProvider(provider)
    keep_alive.attach(lambda _s: None)
    try:
        with pytest.raises(KmsRequestError) as raised:
            keep_alive.decrypt_data_key("wrapped", {})
    finally:
        keep_alive.attach(None)
    assert raised.value is refusal


def test_without_a_pump_calls_run_in_the_callers_thread() -> None:
    provider = GatedProvider()
    provider.gate.set()
    KeepAliveProvider(provider).decrypt_data_key("wrapped", {})
    assert provider.threads == [threading.current_thread()]


def test_other_threads_are_not_given_the_pump() -> None:
    provider = GatedProvider()
    provider.gate.set()
    keep_alive = KeepAliveProvider(provider)
    keep_alive.attach(lambda _s: pytest.fail("pumped from a foreign thread"))
    worker = threading.Thread(target=keep_alive.decrypt_data_key, args=("w", {}))
    worker.start()
    worker.join(10)
    keep_alive.attach(None)
    assert provider.threads == [worker]


def test_generate_passes_through() -> None:
    inner = InMemoryKeyProvider(["k"])
    key = KeepAliveProvider(inner).generate_data_key("k", {})
    assert inner.decrypt_data_key(key.wrapped, {}).plaintext == key.plaintext
