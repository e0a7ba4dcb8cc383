"""KMS outage (10 s) and throttling, injected by the emulator's fault switchboard.

The promises: the producer keeps publishing on its cached data key and fails
clearly, publishing nothing, when it has none; the consumer holds the message it
cannot unwrap, retries, and resumes when KMS is back; nothing is quarantined.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsUnavailableError
from scenario_kit import (
    FAST_RECONNECT,
    ConsumerThread,
    QuarantineWatcher,
    confirm_all,
    ledger_handler,
    publish_retrying,
    publish_stream,
    quick_publisher_options,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

OUTAGE_SECONDS = 10.0
ROTATE_EVERY = 100  # a new data key every 100 messages: many keys to unwrap


def test_kms_outage_and_throttling_lose_and_quarantine_nothing(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("KMS outage of 10 s, then 50 % throttling")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    producer_settings = emq_kms.settings("producer", urls)
    rotating_settings: Settings = dataclasses.replace(
        producer_settings, data_key_max_messages=ROTATE_EVERY
    )
    faults = emq_kms.emulator.faults
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
        kms_backoff=Backoff(initial=0.2, cap=1.0),
    )
    options = quick_publisher_options()
    rotating = EncryptedPublisher.from_settings(
        rotating_settings, topology=topology, options=options
    )
    steady = EncryptedPublisher.from_settings(
        producer_settings, topology=topology, options=options
    )
    with rotating, steady, QuarantineWatcher(urls, topology, ledger):
        # Before the outage: 20 data keys' worth of messages wait in the queue,
        # and the steady publisher holds a cached data key.
        sent = publish_stream(rotating, ledger, count=2_000, size=256, tag="before")
        sent += publish_stream(steady, ledger, count=1, size=256, tag="warm")
        assert confirm_all(rotating, ledger, sent) == []

        faults.set(outage_seconds=3600)  # ended by clear(), after the checks
        ledger.fault(f"KMS outage ({OUTAGE_SECONDS:.0f} s)", 1)
        outage_started = time.monotonic()

        # No cached key: the publish fails at once and clearly; nothing leaves.
        cold = EncryptedPublisher.from_settings(
            producer_settings, topology=topology, options=options
        )
        with cold:
            with pytest.raises(KmsUnavailableError):
                cold.publish(b"never sent in plaintext", message_id="cold-0")
            assert cold.stats().published == 0
        ledger.fault("publishes refused for want of a data key", 1)

        with ConsumerThread(consumer):
            # A cached key keeps the steady publisher going through the outage.
            during = publish_stream(steady, ledger, count=500, size=256, tag="during")
            assert confirm_all(steady, ledger, during) == []
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
            # The consumer held: it could unwrap nothing, and quarantined nothing.
            assert consumer.stats.handled == 0
            assert consumer.stats.kms_retries >= 1
            assert sum(consumer.stats.quarantined.values()) == 0
            faults.clear()

            settle(ledger)
            faults.set(throttle_ratio=0.5)
            ledger.fault("KMS throttling at 50 %", 1)
            throttled, refusals = publish_retrying(
                rotating, ledger, count=1_000, tag="throttled"
            )
            assert confirm_all(rotating, ledger, throttled) == []
            settle(ledger)
            faults.clear()
    ledger.fault("publishes refused while throttled, then retried", refusals)
    ledger.fault("consumer KMS retries", consumer.stats.kms_retries)
    report = ledger.check()
    assert report["quarantined"] == {}
    assert report["published"] == 3_501
