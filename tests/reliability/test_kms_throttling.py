"""KMS quotas: many consumers cold-starting at once against a small QPS quota.

The promise: throttling (HTTP 429 ``Rejected.Throttling``) is transient. A
throttled consumer holds the message and retries later; nothing is
quarantined, nothing is lost. A throttled producer backs off (full jitter)
and tries again.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from scenario_kit import (
    FAST_RECONNECT,
    ConsumerThread,
    QuarantineWatcher,
    confirm_all,
    ledger_handler,
    publish_retrying,
    quick_publisher_options,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import running_emulator
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

QUOTA = 100  # QPS of symmetric operations for the account (the real one: 1,000)
KEYS = 1_000  # one data key per message: every message needs its own Decrypt
CONSUMERS = 20
PREFETCH = 10


def test_twenty_consumers_cold_starting_on_a_thousand_keys_under_a_quota(
    emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger(
        f"KMS throttling: {CONSUMERS} consumers cold-start on {KEYS:,} data keys "
        f"under a {QUOTA}-QPS quota"
    )
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    with running_emulator(qps_quota=QUOTA) as kms:
        producer_settings = dataclasses.replace(
            kms.settings("producer", urls), data_key_max_messages=1
        )
        consumers = [
            EncryptedConsumer.from_settings(
                kms.settings("consumer", urls),
                topology,
                ledger_handler(ledger),
                reconnect_backoff=FAST_RECONNECT,
                kms_backoff=Backoff(initial=0.2, cap=2.0),
                # A small window, so that the backlog spreads over all twenty
                # (with the default of 1,000 the first to connect takes it all).
                prefetch=PREFETCH,
            )
            for _ in range(CONSUMERS)
        ]
        publisher = EncryptedPublisher.from_settings(
            producer_settings, topology=topology, options=quick_publisher_options()
        )
        with publisher, QuarantineWatcher(urls, topology, ledger):
            # The producer needs a fresh data key per message: 1,000
            # GenerateDataKey calls, ten seconds of quota at the least.
            sent, refusals = publish_retrying(publisher, ledger, count=KEYS, tag="key")
            assert confirm_all(publisher, ledger, sent) == []
            generated = kms.emulator.request_count.get("GenerateDataKey", 0)
            kms.emulator.reset_request_count()
            # All consumers start at once, each with an empty key cache: twenty
            # want far more than 100 Decrypt calls a second.
            with ExitStack() as running:
                for index, consumer in enumerate(consumers):
                    running.enter_context(ConsumerThread(consumer, f"consumer-{index}"))
                settle(ledger)
        decrypts = kms.emulator.request_count.get("Decrypt", 0)
    ledger.fault(f"KMS quota of {QUOTA} QPS", 1)
    ledger.fault("GenerateDataKey requests (throttled ones included)", generated)
    ledger.fault("publishes refused while throttled, then retried", refusals)
    ledger.fault("Decrypt requests (throttled ones included)", decrypts)
    ledger.fault(
        "consumer KMS retries (held, not quarantined)",
        sum(c.stats.kms_retries for c in consumers),
    )
    report = ledger.check()
    assert report["published"] == KEYS
    assert report["quarantined"] == {}
    assert sum(sum(c.stats.quarantined.values()) for c in consumers) == 0
    assert sum(c.stats.handled for c in consumers) >= KEYS
    # The quota was the limit: the cold start was throttled, and rode it out.
    assert decrypts > KEYS
    assert sum(c.stats.kms_retries for c in consumers) > 0
