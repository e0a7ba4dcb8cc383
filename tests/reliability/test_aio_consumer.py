"""The connection-reset and consumer-kill scenarios, against the asyncio consumer.

The same fault, publisher, quarantine watcher and ledger as
test_network_faults.py and test_consumer_crash.py; the consumer is
:class:`~envelope_mq.aio.AsyncEncryptedConsumer` (in a thread with its own
event loop, or in a process of its own that is SIGKILLed).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from crash_kit import (
    KillableProcess,
    Processes,
    consumer_env,
    consumers_killed_while_publishing,
)
from envelope_mq.producer.options import TransportStats
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from scenario_kit import (
    FAST_RECONNECT,
    AsyncConsumerThread,
    QuarantineWatcher,
    address_of,
    confirm_all,
    payload,
    publish_stream,
    quick_publisher_options,
    resetting,
    scenario_publisher,
    scenario_topology,
    settle,
)

from envelope_mq.aio import AsyncEncryptedConsumer, AsyncEncryptedPublisher
from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

PROCESS = Path(__file__).with_name("aio_consume_process.py")


def test_connection_reset_every_two_seconds_loses_nothing_with_asyncio(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("asyncio consumer; proxy resets both connections every 2 s")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:
        url = proxy.rewrite(emq_rabbitmq_url)
        consumer = AsyncEncryptedConsumer.from_settings(
            emq_kms.settings("consumer", [url]),
            topology,
            reconnect_backoff=FAST_RECONNECT,
        )
        publisher = scenario_publisher(emq_kms, [url], topology)

        with (
            QuarantineWatcher([emq_rabbitmq_url], topology, ledger),
            AsyncConsumerThread(consumer, ledger),
            resetting(proxy, ledger, 2.0),
        ):
            with publisher:
                # Paced at about 1,000 messages/s: some ten resets mid-stream.
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
    assert errors == []
    ledger.fault("producer reconnects", publisher.stats().reconnects)
    ledger.fault("consumer reconnects", consumer.stats.reconnects)
    report = ledger.check()
    assert report["quarantined"] == {}
    # The premise: the resets did hit the consumer mid-stream.
    assert consumer.stats.reconnects >= 5


def test_asyncio_consumers_killed_three_times_lose_nothing(
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
    tmp_path: Path,
    processes: Processes,
) -> None:
    messages, kills, lines_before_kill = 8_000, 3, 1_000
    ledger = MessageLedger("asyncio consumer SIGKILLed 3 times mid-stream, restarted")
    topology = scenario_topology(
        emq_amqp_names.queue, emq_amqp_names.exchange, expires=False
    )
    env = consumer_env(emq_kms, emq_rabbitmq_url)

    def start(out: Path) -> KillableProcess:
        argv = [sys.executable, str(PROCESS), str(out)]
        argv += [topology.queue, topology.exchange]
        return processes.start(argv, env, out.with_suffix(".stderr"))

    errors, exit_code = consumers_killed_while_publishing(
        emq_kms,
        emq_rabbitmq_url,
        topology,
        ledger,
        start,
        tmp_path,
        messages=messages,
        kills=kills,
        lines_before_kill=lines_before_kill,
    )
    assert exit_code == 0
    assert errors == []
    report = ledger.check()
    assert report["quarantined"] == {}
    assert report["published"] == messages


def test_the_asyncio_publisher_republishes_through_connection_resets(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    """Every message the asyncio publisher confirmed, through a proxy that
    resets its connection every second, reaches the consumer (which reads
    past the proxy): unconfirmed ones are published again after each
    reconnect, at-least-once."""
    ledger = MessageLedger("asyncio publisher; proxy resets its connection every 1 s")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    consumer = AsyncEncryptedConsumer.from_settings(
        emq_kms.settings("consumer", [emq_rabbitmq_url]),
        topology,
        reconnect_backoff=FAST_RECONNECT,
    )
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:
        settings = emq_kms.settings("producer", [proxy.rewrite(emq_rabbitmq_url)])
        with (
            QuarantineWatcher([emq_rabbitmq_url], topology, ledger),
            AsyncConsumerThread(consumer, ledger),
        ):
            with resetting(proxy, ledger, 1.0):
                stats, errors = asyncio.run(
                    _publish_paced(settings, topology, ledger, 6_000)
                )
            settle(ledger)
    assert errors == []
    ledger.fault("producer reconnects", stats.reconnects)
    report = ledger.check()
    assert report["quarantined"] == {}
    # The premise: the resets did hit the publisher mid-stream.
    assert stats.reconnects >= 3
    assert stats.republished > 0


async def _publish_paced(
    settings: Settings, topology: Topology, ledger: MessageLedger, count: int
) -> tuple[TransportStats, list[str]]:
    """``count`` messages at about 1,000/s; the stats and what failed."""
    publisher = AsyncEncryptedPublisher.from_settings(
        settings, topology=topology, options=quick_publisher_options()
    )
    futures = []
    async with publisher:
        for i in range(count):
            body = payload("aio-publisher", i, 200)
            message_id = f"aio-publisher-{i}"
            ledger.published(message_id, body)
            futures.append(await publisher.publish(body, message_id=message_id))
            if i % 100 == 99:
                await asyncio.sleep(0.1)
        results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return publisher.stats(), errors
