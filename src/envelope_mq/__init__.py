"""envelope-mq: encrypted messaging over RabbitMQ with KMS envelope encryption.

Everything a program needs comes from here::

    from envelope_mq import EncryptedConsumer, EncryptedPublisher, Settings, Topology

The names below are the public surface (pinned by tests/unit/test_public_api.py);
the subpackages (``envelope_mq.producer``, ``envelope_mq.consumer``,
``envelope_mq.shared`` and the optional ``envelope_mq.kms_emulator``,
``envelope_mq.bench``, ``envelope_mq.testing``) are where they live.

The facade is lazy (PEP 562): ``import envelope_mq`` imports nothing else, and
each name loads its module on first use. Every ``import envelope_mq.<sub>``
runs this file first — the KMS emulator's process, ``envelope-mq kms-emulator
--help``, a test importing ``envelope_mq.shared.wire`` — and an eager facade
would load pika, the producer, the consumer and the KMS SDK into each of them.
The imports under TYPE_CHECKING give mypy and editors the same names eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envelope_mq.consumer.backoff import Backoff
    from envelope_mq.consumer.decisions import Reject, Retry
    from envelope_mq.consumer.message import ReceivedMessage
    from envelope_mq.consumer.policy import ContextPolicy
    from envelope_mq.consumer.worker import ConsumerStats, EncryptedConsumer
    from envelope_mq.producer.options import TransportOptions, TransportStats
    from envelope_mq.producer.publisher import EncryptedPublisher
    from envelope_mq.shared.amqp import ConnectionOptions, Topology
    from envelope_mq.shared.config import Settings
    from envelope_mq.shared.errors import (
        BrokerError,
        BrokerUnavailableError,
        ConfigError,
        DecryptionError,
        KeyMismatchError,
        KmsCallerError,
        KmsError,
        KmsRequestError,
        KmsUnavailableError,
        MalformedMessageError,
        MessageNackedError,
        MessageUnroutableError,
        MessagingError,
        PublishNotConfirmedError,
        SealingError,
    )
    from envelope_mq.shared.kms import (
        AliyunKms,
        DataKey,
        InMemoryKeyProvider,
        KeyProvider,
        ManualClock,
        UnwrappedKey,
        WrappedCopy,
    )
    from envelope_mq.shared.observability import Metrics
    from envelope_mq.stage import EncryptedStage, StageStats
    from envelope_mq.stage_output import StageOutput

    __version__: str

__all__ = [
    "AliyunKms",
    "Backoff",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "ConnectionOptions",
    "ConsumerStats",
    "ContextPolicy",
    "DataKey",
    "DecryptionError",
    "EncryptedConsumer",
    "EncryptedPublisher",
    "EncryptedStage",
    "InMemoryKeyProvider",
    "KeyMismatchError",
    "KeyProvider",
    "KmsCallerError",
    "KmsError",
    "KmsRequestError",
    "KmsUnavailableError",
    "MalformedMessageError",
    "ManualClock",
    "MessageNackedError",
    "MessageUnroutableError",
    "MessagingError",
    "Metrics",
    "PublishNotConfirmedError",
    "ReceivedMessage",
    "Reject",
    "Retry",
    "SealingError",
    "Settings",
    "StageOutput",
    "StageStats",
    "Topology",
    "TransportOptions",
    "TransportStats",
    "UnwrappedKey",
    "WrappedCopy",
    "__version__",
]

_ERRORS = "envelope_mq.shared.errors"
# name -> the module that defines it
_HOMES = {
    "AliyunKms": "envelope_mq.shared.kms",
    "Backoff": "envelope_mq.consumer.backoff",
    "BrokerError": _ERRORS,
    "BrokerUnavailableError": _ERRORS,
    "ConfigError": _ERRORS,
    "ConnectionOptions": "envelope_mq.shared.amqp",
    "ConsumerStats": "envelope_mq.consumer.worker",
    "ContextPolicy": "envelope_mq.consumer.policy",
    "DataKey": "envelope_mq.shared.kms",
    "DecryptionError": _ERRORS,
    "EncryptedConsumer": "envelope_mq.consumer.worker",
    "EncryptedPublisher": "envelope_mq.producer.publisher",
    "EncryptedStage": "envelope_mq.stage",
    "InMemoryKeyProvider": "envelope_mq.shared.kms",
    "KeyMismatchError": _ERRORS,
    "KeyProvider": "envelope_mq.shared.kms",
    "KmsCallerError": _ERRORS,
    "KmsError": _ERRORS,
    "KmsRequestError": _ERRORS,
    "KmsUnavailableError": _ERRORS,
    "MalformedMessageError": _ERRORS,
    "ManualClock": "envelope_mq.shared.kms",
    "MessageNackedError": _ERRORS,
    "MessageUnroutableError": _ERRORS,
    "MessagingError": _ERRORS,
    "Metrics": "envelope_mq.shared.observability",
    "PublishNotConfirmedError": _ERRORS,
    "ReceivedMessage": "envelope_mq.consumer.message",
    "Reject": "envelope_mq.consumer.decisions",
    "Retry": "envelope_mq.consumer.decisions",
    "SealingError": _ERRORS,
    "Settings": "envelope_mq.shared.config",
    "StageOutput": "envelope_mq.stage_output",
    "StageStats": "envelope_mq.stage",
    "Topology": "envelope_mq.shared.amqp",
    "TransportOptions": "envelope_mq.producer.options",
    "TransportStats": "envelope_mq.producer.options",
    "UnwrappedKey": "envelope_mq.shared.kms",
    "WrappedCopy": "envelope_mq.shared.kms",
}


def __getattr__(name: str) -> Any:
    """PEP 562: load the module that defines ``name`` on first use, then keep it."""
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("envelope-mq")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
