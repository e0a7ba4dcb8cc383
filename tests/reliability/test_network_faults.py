"""Network faults between the clients and RabbitMQ, injected by the fault proxy.

Both scenarios publish through the real EncryptedPublisher and consume with the
real EncryptedConsumer, through one FaultProxy in front of the session broker,
and prove with the ledger that every confirmed message arrived intact.
"""

from __future__ import annotations

import pytest
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    address_of,
    check_with_reconnects,
    confirm_all,
    publish_stream,
    resetting,
    scenario_clients,
    scenario_topology,
    settle,
)

from envelope_mq.testing.faultproxy import Bandwidth, FaultProxy, Latency
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability


def test_connection_reset_every_two_seconds_loses_nothing(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("proxy resets both connections every 2 s")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:
        url = proxy.rewrite(emq_rabbitmq_url)
        consumer, publisher = scenario_clients(emq_kms, [url], topology, ledger)

        with (
            QuarantineWatcher([emq_rabbitmq_url], topology, ledger),
            ConsumerThread(consumer),
            resetting(proxy, ledger, 2.0),
        ):
            with publisher:
                # Paced at about 1,000 messages/s, so that the run spans
                # some ten resets instead of finishing between two.
                sent = publish_stream(
                    publisher,
                    ledger,
                    count=20_000,
                    size=200,
                    tag="reset",
                    pause_every=100,
                    pause=0.1,
                )
                errors = confirm_all(publisher, ledger, sent)
            settle(ledger)
        stats = publisher.stats()
    assert errors == []
    report = check_with_reconnects(ledger, publisher, consumer)
    assert report["quarantined"] == {}
    # The premise: the resets did hit both sides mid-stream.
    assert stats.reconnects >= 5
    assert consumer.stats.reconnects >= 5


def test_slow_network_completes_and_heartbeats_hold(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("200 ms latency each way, 500 KB/s cap, 5 s heartbeat")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:
        # A 5 s heartbeat: the broker and pika both give up after two missed ones.
        url = proxy.rewrite(emq_rabbitmq_url) + "?heartbeat=5"
        for stream in ("upstream", "downstream"):
            proxy.add(Latency(200, jitter_ms=20), stream=stream)
            proxy.add(Bandwidth(rate_kb=500), stream=stream)
        ledger.fault("latency 200 ms ± 20 ms, both ways", 1)
        ledger.fault("bandwidth 500 KB/s, both ways", 1)
        consumer, publisher = scenario_clients(
            emq_kms, [url], topology, ledger, prefetch=200
        )
        with (
            QuarantineWatcher([emq_rabbitmq_url], topology, ledger),
            ConsumerThread(consumer),
        ):
            with publisher:
                sent = publish_stream(
                    publisher, ledger, count=2_000, size=512, tag="slow"
                )
                errors = confirm_all(publisher, ledger, sent)
            settle(ledger)
        stats = publisher.stats()
    assert errors == []
    report = ledger.check()
    assert report["quarantined"] == {}
    # Heartbeats held: neither side ever lost its connection.
    assert stats.reconnects == 0
    assert consumer.stats.reconnects == 0
    assert report["duplicates"] == 0
