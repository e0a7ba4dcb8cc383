"""The Decrypt budget: at most ``rate`` KMS calls per second on unknown keys."""

from __future__ import annotations

import pytest
from envelope_mq.consumer.budget import DECRYPT_BUDGET_CODE, DecryptBudget
from envelope_mq.shared.errors import KmsUnavailableError
from envelope_mq.shared.kms import InMemoryKeyProvider
from fakes import Clock


def test_calls_over_the_rate_are_deferred_and_pass_once_time_has_passed() -> None:
    provider = InMemoryKeyProvider(["k"])
    blobs = [provider.generate_data_key("k", {}).wrapped for _ in range(5)]
    clock = Clock()
    budget = DecryptBudget(provider, rate=2, clock=clock)
    assert budget.decrypt_data_key(blobs[0], {}).key_id == "k"
    budget.decrypt_data_key(blobs[1], {})
    with pytest.raises(KmsUnavailableError) as deferred:
        budget.decrypt_data_key(blobs[2], {})
    assert deferred.value.code == DECRYPT_BUDGET_CODE
    assert provider.decrypt_calls == 2  # the deferred call never reached KMS
    clock.now += 0.5  # one more token
    budget.decrypt_data_key(blobs[2], {})
    with pytest.raises(KmsUnavailableError):
        budget.decrypt_data_key(blobs[3], {})
    assert (provider.decrypt_calls, budget.deferred) == (3, 2)


def test_a_long_idle_spell_allows_one_burst_not_more() -> None:
    provider = InMemoryKeyProvider(["k"])
    blob = provider.generate_data_key("k", {}).wrapped
    clock = Clock()
    budget = DecryptBudget(provider, rate=3, clock=clock)
    clock.now += 3600
    for _ in range(3):
        budget.decrypt_data_key(blob, {})
    with pytest.raises(KmsUnavailableError):
        budget.decrypt_data_key(blob, {})


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DecryptBudget(InMemoryKeyProvider(), rate=0)
