"""The consumer: open envelope-encrypted messages and hand them over, at least once.

:class:`EncryptedConsumer` is the library; ``envelope-mq consume`` and
``envelope-mq quarantine-replay`` are the commands. How each delivery ends is
decided by the pure :func:`handle` and applied to the broker by the transport.
"""

from __future__ import annotations

from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.decisions import Reject, Retry
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import Outcome, Reason, Verdict, handle
from envelope_mq.consumer.peek import StoredMessage, peek
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.replay import ReplayResult, replay_quarantine
from envelope_mq.consumer.streams import (
    MemoryOffsets,
    OffsetFile,
    OffsetSpec,
    OffsetStore,
    StreamCursor,
)
from envelope_mq.consumer.worker import ConsumerStats, EncryptedConsumer

__all__ = [
    "Backoff",
    "ConsumerStats",
    "ContextPolicy",
    "Delivery",
    "EncryptedConsumer",
    "KeepAliveProvider",
    "MemoryOffsets",
    "OffsetFile",
    "OffsetSpec",
    "OffsetStore",
    "Outcome",
    "Reason",
    "ReceivedMessage",
    "Reject",
    "ReplayResult",
    "Retry",
    "StoredMessage",
    "StreamCursor",
    "Verdict",
    "handle",
    "peek",
    "replay_quarantine",
]
