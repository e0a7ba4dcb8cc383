"""Fixtures for the emulator's domain tests: KmsService called directly, no HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from emu_helpers import FakeClock, new_key
from envelope_mq.kms_emulator.service import KmsService


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kms(clock: FakeClock) -> Iterator[KmsService]:
    service = KmsService.open(clock=clock)
    yield service
    service.close()


@pytest.fixture
def key_id(kms: KmsService) -> str:
    return new_key(kms, Description="test key")
