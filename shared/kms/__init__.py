"""Data keys from Alibaba Cloud KMS: the KeyProvider port and its two providers.

:class:`AliyunKms` talks to KMS 2016-01-20 (the real service or the local
emulator) through ``aliyun-python-sdk-kms``; :class:`InMemoryKeyProvider` is the
test double shipped in the package, as httpx ships ``MockTransport``. Import
everything from here; the submodules are an implementation detail.
"""

from __future__ import annotations

from envelope_mq.shared.kms.aliyun import AliyunKms
from envelope_mq.shared.kms.datakey import (
    DATA_KEY_SIZE,
    DataKey,
    KeyProvider,
    UnwrappedKey,
    canonical_context,
    replay_error,
)
from envelope_mq.shared.kms.faults import caller_fault, is_permission_refusal
from envelope_mq.shared.kms.keyref import key_id_of, same_key
from envelope_mq.shared.kms.memory import InMemoryKeyProvider

__all__ = [
    "DATA_KEY_SIZE",
    "AliyunKms",
    "DataKey",
    "InMemoryKeyProvider",
    "KeyProvider",
    "UnwrappedKey",
    "caller_fault",
    "canonical_context",
    "is_permission_refusal",
    "key_id_of",
    "replay_error",
    "same_key",
]
