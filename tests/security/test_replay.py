"""Replay: a captured message sent again, as it was, through the real broker.

Without protection a replay is delivered again (at-least-once cannot tell it
from a redelivery). ``max_age`` refuses messages whose authenticated timestamp
is too old; the de-duplication window drops an id handled already, but only
within the window: it bounds memory, so it is not exactly-once beyond it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from envelope_mq.consumer.worker import EncryptedConsumer
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawMessage,
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

HOUR = 3600


def run_consumer(
    kms: KmsFixture,
    urls: list[str],
    amqp_names: AmqpNames,
    ledger: MessageLedger,
    until: Callable[[EncryptedConsumer], bool] = lambda _: True,
    **options: int,
) -> EncryptedConsumer:
    """Consume until every message is settled and ``until`` holds; the consumer."""
    topology = scenario_topology(amqp_names.queue, amqp_names.exchange)
    consumer = EncryptedConsumer.from_settings(
        kms.settings("consumer", urls), topology, ledger_handler(ledger), **options
    )
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        settle(ledger)
        # The replay comes after its original: settled ids say nothing of it.
        deadline = time.monotonic() + 60
        while not until(consumer) and time.monotonic() < deadline:
            time.sleep(0.05)
    return consumer


def send(publisher: RawPublisher, ledger: MessageLedger, message_id: str) -> RawMessage:
    body = payload("replay", len(ledger), 64)
    message = publisher.seal(body, message_id)
    ledger.published(message_id, body)
    publisher.send(message, message_id)
    return message


def test_max_age_quarantines_old_messages_and_replays_of_them(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("replay: max_age 60 s")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(emq_kms.settings("producer", urls), topology) as publisher:
        send(publisher, ledger, "fresh")
        # Sealed an hour ago (authentic), and now replayed by someone.
        old = publisher.seal(b"an old order", "old", timestamp=int(time.time()) - HOUR)
        ledger.published("old", b"an old order", expect="quarantined")
        publisher.send(old, "old")
        ledger.fault("message sealed an hour ago", 1)
    run_consumer(emq_kms, urls, emq_amqp_names, ledger, max_age=60)
    report = ledger.check()
    assert report["handled"] == 1
    assert report["quarantined"] == {"expired": 1}


def test_dedup_window_drops_a_replay_of_a_handled_message(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("replay: de-duplication window of 100")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(emq_kms.settings("producer", urls), topology) as publisher:
        captured = send(publisher, ledger, "order-1")
        send(publisher, ledger, "order-2")
        publisher.send(captured, "order-1")  # the replay, byte for byte
        ledger.fault("replays of a handled message", 1)
    consumer = run_consumer(
        emq_kms,
        urls,
        emq_amqp_names,
        ledger,
        until=lambda c: c.stats.duplicates_dropped >= 1,
        dedup_window=100,
    )
    report = ledger.check()
    assert report["duplicates"] == 0
    assert consumer.stats.duplicates_dropped == 1


def test_a_replay_beyond_the_window_is_delivered_again(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("replay: beyond a window of 2")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(emq_kms.settings("producer", urls), topology) as publisher:
        captured = send(publisher, ledger, "order-1")
        for n in range(2, 5):
            send(publisher, ledger, f"order-{n}")
        publisher.send(captured, "order-1")
        ledger.fault("replays of a handled message", 1)
    consumer = run_consumer(
        emq_kms,
        urls,
        emq_amqp_names,
        ledger,
        until=lambda _: ledger.report()["duplicates"] >= 1,
        dedup_window=2,
    )
    report = ledger.check()
    assert report["duplicates"] == 1  # handled twice: the window forgot it
    assert consumer.stats.duplicates_dropped == 0
