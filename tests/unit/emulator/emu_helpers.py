"""Helpers for the emulator's domain tests (imported by the test modules)."""

from __future__ import annotations

import base64
import calendar
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.service import KmsService

START = calendar.timegm((2026, 1, 1, 0, 0, 0))  # 2026-01-01T00:00:00Z
DAY = 86400


class FakeClock:
    """An injectable clock that moves only when told to."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def call(kms: KmsService, action: str, **params: str) -> dict[str, Any]:
    """Call ``action`` with authentication off."""
    return kms.call(action, params, None)


def error_of(kms: KmsService, action: str, **params: str) -> ApiError:
    """The ApiError ``action`` raises (fails the test if it succeeds)."""
    try:
        body = kms.call(action, params, None)
    except ApiError as exc:
        return exc
    raise AssertionError(f"{action} succeeded: {sorted(body)}")


def new_key(kms: KmsService, **params: str) -> str:
    """Create a key and return its KeyId."""
    return str(call(kms, "CreateKey", **params)["KeyMetadata"]["KeyId"])


def blob_bytes(blob: str) -> bytes:
    return base64.b64decode(blob, validate=True)


def with_byte_flipped(blob: str, index: int) -> str:
    raw = bytearray(blob_bytes(blob))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")
