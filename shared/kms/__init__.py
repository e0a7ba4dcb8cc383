"""Data keys from Alibaba Cloud KMS: the KeyProvider port and its providers.

:class:`AliyunKms` talks to KMS 2016-01-20 (the real service's shared gateway
or the local emulator) through ``aliyun-python-sdk-kms``; :class:`DedicatedKms`
to a KMS 3.0 instance's dedicated gateway through ``alibabacloud-kms20160120``;
:func:`kms_from_settings` picks one; :class:`Credentials` is where both get
their (refreshable) credentials. :class:`InMemoryKeyProvider` and
:class:`ManualClock` are the test doubles shipped in the package, as httpx ships
``MockTransport``. Import
everything from here; the submodules are an implementation detail.
"""

from __future__ import annotations

from envelope_mq.shared.kms.aliyun import AliyunKms
from envelope_mq.shared.kms.credentials import Credentials
from envelope_mq.shared.kms.datakey import (
    DATA_KEY_SIZE,
    DataKey,
    KeyProvider,
    UnwrappedKey,
    WrappedCopy,
    canonical_context,
    local_copy,
    replay_error,
)
from envelope_mq.shared.kms.dedicated import DedicatedKms
from envelope_mq.shared.kms.factory import KmsClient, kms_from_settings
from envelope_mq.shared.kms.faults import caller_fault, is_permission_refusal
from envelope_mq.shared.kms.keyref import key_id_of, same_key
from envelope_mq.shared.kms.memory import InMemoryKeyProvider, ManualClock

__all__ = [
    "DATA_KEY_SIZE",
    "AliyunKms",
    "Credentials",
    "DataKey",
    "DedicatedKms",
    "InMemoryKeyProvider",
    "KeyProvider",
    "KmsClient",
    "ManualClock",
    "UnwrappedKey",
    "WrappedCopy",
    "caller_fault",
    "canonical_context",
    "is_permission_refusal",
    "key_id_of",
    "kms_from_settings",
    "local_copy",
    "replay_error",
    "same_key",
]
