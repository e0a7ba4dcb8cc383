"""What the broker-facing sections share: the broker, the KMS, the producer's keys.

One :class:`Lab` lives for the whole run, as one long-lived producer and
consumer would: the producer's data key cache and the consumer's unwrap
cache are made once, so the KMS economy figures describe a real deployment
rather than a fresh process per round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from envelope_mq.bench.broker import BenchBroker
from envelope_mq.shared.config import Settings
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms
from envelope_mq.testing.kms import KmsFixture, running_emulator

__all__ = ["CONTEXT", "Lab", "open_lab"]

# The encryption context every benchmark message is sealed under.
CONTEXT = {"app": "envelope-mq-bench"}


@dataclass
class Lab:
    """The broker, the in-process KMS emulator, and the two long-lived key caches."""

    broker: BenchBroker
    kms: KmsFixture
    data_keys: DataKeyCache  # the producer's, GenerateDataKey only
    unwrap: UnwrapCache  # the throughput consumer's, Decrypt only
    started: float = field(default_factory=time.monotonic)
    # Distinct wrapped data keys each consumer process saw, by consumer name.
    keys_seen: dict[str, int] = field(default_factory=dict)

    @property
    def key_id(self) -> str:
        """The master key every message is sealed under."""
        return self.kms.key_id

    def settings(self, role: str) -> Settings:
        """Settings for the producer or consumer role (what a child process gets)."""
        return self.kms.settings(
            "producer" if role == "producer" else "consumer", self.broker.urls
        )


@contextmanager
def open_lab(urls: Sequence[str]) -> Iterator[Lab]:
    """Connect to the broker and start an emulator with producer/consumer principals."""
    broker = BenchBroker(urls)
    try:
        with running_emulator() as kms:
            producer = AliyunKms.from_settings(kms.settings("producer", urls))
            consumer = AliyunKms.from_settings(kms.settings("consumer", urls))
            yield Lab(broker, kms, DataKeyCache(producer), UnwrapCache(consumer))
    finally:
        broker.close()
