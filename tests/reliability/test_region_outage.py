"""A KMS region killed mid-stream: the second region carries the stream on.

Two emulator processes are two regions (cn-shanghai, the primary, and
cn-beijing), each with its own master key. The producer wraps every data key
in both (a new key every 50 messages, so the consumers keep needing Decrypt);
a blocking and an asyncio consumer ask Shanghai first, then Beijing. With a
backlog of both-copy messages in the queue and the consumers mid-way through
it, Shanghai's emulator is SIGKILLed; the producer goes on publishing (its
data keys now generated in Beijing, with no Shanghai copy). The promises:
lost = 0, nothing quarantined, and Beijing did the work after the kill.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from regions_kit import new_principals, region_settings, two_region_processes
from scenario_kit import (
    FAST_RECONNECT,
    PATIENCE,
    AsyncConsumerThread,
    ConsumerThread,
    QuarantineWatcher,
    confirm_all,
    ledger_handler,
    publish_stream,
    quick_publisher_options,
    scenario_topology,
    settle,
)

from envelope_mq.aio import AsyncEncryptedConsumer
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

ROTATE_EVERY = 50  # messages per data key
BACKLOG = 3_000  # published before the consumers start: 60 data keys
SETTLED_AT_KILL = 300  # the consumers are this far into the backlog
AFTER_KILL = 1_500  # published once the primary region is gone


def test_primary_kms_region_killed_mid_stream_loses_and_quarantines_nothing(
    emq_rabbitmq_url: str, emq_amqp_names: AmqpNames, tmp_path: Path
) -> None:
    ledger = MessageLedger(
        "primary KMS region SIGKILLed mid-stream; consumers carry on through "
        "the second region"
    )
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    principals = new_principals()
    with two_region_processes(principals, tmp_path) as (shanghai, beijing):
        regions = [shanghai.region, beijing.region]
        producer_settings = region_settings("producer", principals, urls, regions)
        publisher = EncryptedPublisher.from_settings(
            dataclasses.replace(producer_settings, data_key_max_messages=ROTATE_EVERY),
            topology=topology,
            options=quick_publisher_options(),
        )
        consumer_settings = region_settings("consumer", principals, urls, regions)
        booked = ledger_handler(ledger)

        def handler(message: ReceivedMessage) -> None:
            # A millisecond a message: the backlog outlasts the kill by far,
            # even on a loaded machine.
            time.sleep(0.001)
            booked(message)

        consumer = EncryptedConsumer.from_settings(
            consumer_settings,
            topology,
            handler,
            prefetch=200,
            reconnect_backoff=FAST_RECONNECT,
            kms_backoff=Backoff(initial=0.2, cap=1.0),
        )
        aio_consumer = AsyncEncryptedConsumer.from_settings(
            consumer_settings,
            topology,
            prefetch=200,
            reconnect_backoff=FAST_RECONNECT,
            kms_backoff=Backoff(initial=0.2, cap=1.0),
        )
        with publisher, QuarantineWatcher(urls, topology, ledger):
            backlog = publish_stream(
                publisher, ledger, count=BACKLOG, size=256, tag="backlog"
            )
            assert confirm_all(publisher, ledger, backlog) == []
            before = beijing.requests()
            # Every key so far was made in Shanghai and wrapped in Beijing too.
            assert before.get("GenerateDataKey", 0) == 0
            assert before.get("Encrypt", 0) == BACKLOG // ROTATE_EVERY
            with (
                ConsumerThread(consumer),
                AsyncConsumerThread(aio_consumer, ledger),
            ):
                assert ledger.wait_settled(PATIENCE, at_least=SETTLED_AT_KILL)
                shanghai.kill()
                ledger.fault("SIGKILL of the primary KMS region's emulator", 1)
                assert ledger.wait_settled(PATIENCE, at_least=BACKLOG)
                # The rest of the backlog opened through its Beijing copies.
                backlog_decrypts = beijing.requests().get("Decrypt", 0)
                assert backlog_decrypts >= 1
                after = publish_stream(
                    publisher,
                    ledger,
                    count=AFTER_KILL,
                    size=256,
                    tag="after",
                    pause_every=100,
                    pause=0.05,
                )
                assert confirm_all(publisher, ledger, after) == []
                settle(ledger)
        counts = beijing.requests()
    ledger.fault("data keys generated in the second region", counts["GenerateDataKey"])
    ledger.fault("backlog keys unwrapped in the second region", backlog_decrypts)
    ledger.fault("Decrypt calls answered by the second region", counts["Decrypt"])
    ledger.fault("consumer KMS retries", consumer.stats.kms_retries)
    report = ledger.check()
    assert report["quarantined"] == {}
    assert report["published"] == BACKLOG + AFTER_KILL
    # The premise: the producer failed over (every key after the kill was
    # made in Beijing), and the consumers unwrapped those there too.
    assert counts["GenerateDataKey"] >= AFTER_KILL // ROTATE_EVERY
    assert counts["Decrypt"] >= backlog_decrypts + counts["GenerateDataKey"]
    assert consumer.stats.handled > 0
    assert aio_consumer.stats.handled > 0
