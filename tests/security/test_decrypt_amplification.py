"""A publisher without keys cannot make a consumer spend KMS Decrypt calls at will.

Messages whose x-emq-data-key is a random blob each cost a Decrypt (no cache
can know them). With ``max_decrypt_rate=2`` the consumer makes at most two
such calls per second (plus a burst of two): the rest wait unacknowledged and
are retried, and in the end every junk message is quarantined as KMS refused
it (kms-rejected) and every real one handled: nothing lost, nothing
quarantined that KMS would have opened.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Mapping

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.kms import AliyunKms, DataKey, UnwrappedKey
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.security

RATE = 2.0
JUNK = 12
REAL = 5


class CountingKms:
    """The real client, counting the Decrypt calls that reach KMS."""

    def __init__(self, kms: AliyunKms) -> None:
        self.kms = kms
        self.decrypts = 0
        self._lock = threading.Lock()

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.kms.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        with self._lock:
            self.decrypts += 1
        return self.kms.decrypt_data_key(wrapped, context)


def test_unknown_wrapped_keys_cost_at_most_the_configured_decrypt_rate(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("KMS amplification: random wrapped keys, 2 Decrypt/s")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(emq_kms.settings("producer", urls), topology) as publisher:
        for i in range(JUNK):
            mid, body = f"junk-{i}", payload("junk", i, 64)
            message = publisher.seal(body, mid)
            blob = base64.b64encode(os.urandom(96)).decode()
            message.headers["x-emq-data-key"] = blob  # no key anyone holds
            ledger.published(mid, body, expect="quarantined")
            publisher.send(message, mid)
        for i in range(REAL):
            mid, body = f"real-{i}", payload("real", i, 64)
            ledger.published(mid, body)
            publisher.send(publisher.seal(body, mid), mid)
    ledger.fault("x-emq-data-key replaced by a random blob", JUNK)

    with AliyunKms.from_settings(emq_kms.settings("consumer", urls)) as kms:
        counting = CountingKms(kms)
        consumer = EncryptedConsumer.from_settings(
            emq_kms.settings("consumer", urls),
            topology,
            ledger_handler(ledger),
            provider=counting,
            max_decrypt_rate=RATE,
            kms_backoff=Backoff(initial=0.1, cap=0.5),
        )
        started = time.monotonic()
        with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
            settle(ledger)
        elapsed = time.monotonic() - started
    report = ledger.check()
    assert report["quarantined"] == {"kms-rejected": JUNK}
    assert report["handled"] == REAL
    # every blob needed its Decrypt; none more than the budget allowed
    assert counting.decrypts >= JUNK
    assert counting.decrypts <= RATE + RATE * elapsed
    assert consumer.stats.kms_retries > 0  # some waited their turn
