"""KeepAliveProvider: the connection is pumped while a KMS call is in flight."""

from __future__ import annotations

import threading

import pytest
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.kms import InMemoryKeyProvider
from fakes import BlockingDecryptProvider


def test_connection_is_pumped_until_kms_answers() -> None:
    provider = BlockingDecryptProvider()
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
    provider = BlockingDecryptProvider(error=refusal)
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
    provider = BlockingDecryptProvider()
    provider.gate.set()
    KeepAliveProvider(provider).decrypt_data_key("wrapped", {})
    assert provider.threads == [threading.current_thread()]


def test_other_threads_are_not_given_the_pump() -> None:
    provider = BlockingDecryptProvider()
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
