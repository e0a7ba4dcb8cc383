"""Stream consumers through connection resets and SIGKILLs: the position kept.

The events are published straight to the broker; the replay reads them from
``first`` through a fault proxy that resets the connection every second. Each
reconnect resubscribes after the last offset settled (consumer/streams.py), so
the ledger must show every event handled, none lost, and the offset file the
stream's last offset. Then ``envelope-mq consume`` processes reading a stream
are SIGKILLed three times and restarted on the same offset file: lost = 0, and
what a kill makes the next run read again is bounded by ``--commit-every``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from crash_kit import OutputTail, Processes, consumer_env, kill_consumers_mid_stream
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.streams import OffsetFile, OffsetSpec, StreamCursor
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.amqp import Topology
from scenario_kit import (
    FAST_RECONNECT,
    ConsumerThread,
    address_of,
    confirm_all,
    publish_stream,
    resetting,
    scenario_publisher,
    settle,
)

from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

EVENTS = 4_000


def test_replay_through_connection_resets_loses_nothing_and_keeps_its_position(
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_stream_topology: Topology,
    tmp_path: Path,
) -> None:
    ledger = MessageLedger("stream replay, proxy resets the connection every 1 s")
    topology = emq_stream_topology
    with scenario_publisher(emq_kms, [emq_rabbitmq_url], topology) as publisher:
        sent = publish_stream(publisher, ledger, count=EVENTS, size=200, tag="replay")
        assert confirm_all(publisher, ledger, sent) == []

    def handle(message: ReceivedMessage) -> None:
        ledger.handled(message.message_id, message.body)
        time.sleep(0.001)  # a replay of some seconds: the resets land mid-way

    position = OffsetFile(tmp_path / "position")
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:
        consumer = EncryptedConsumer.from_settings(
            emq_kms.settings("consumer", [proxy.rewrite(emq_rabbitmq_url)]),
            topology,
            handle,
            prefetch=200,
            reconnect_backoff=FAST_RECONNECT,
            stream=StreamCursor(OffsetSpec.parse("first"), position, commit_every=500),
        )

        with ConsumerThread(consumer), resetting(proxy, ledger, 1.0):
            settle(ledger)
    ledger.fault("consumer reconnects", consumer.stats.reconnects)
    report = ledger.check()
    assert report["lost"] == 0
    # Each reconnect resumes right after the last event handled.
    assert report["duplicates"] == 0
    assert consumer.stats.reconnects >= 2  # the premise: resets hit mid-replay
    assert position.load() == EVENTS - 1


KILLED_EVENTS = 10_000
COMMIT_EVERY = 100


def test_a_stream_consumer_killed_three_times_resumes_from_its_offset_file(
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
    tmp_path: Path,
    processes: Processes,
) -> None:
    ledger = MessageLedger(
        f"envelope-mq consume on a stream SIGKILLed 3 times, --commit-every "
        f"{COMMIT_EVERY}, restarted"
    )
    # As the CLI declares it (no retention arguments); emq_amqp_names deletes it.
    topology = Topology(
        emq_amqp_names.queue, emq_amqp_names.exchange, queue_type="stream"
    )
    with scenario_publisher(emq_kms, [emq_rabbitmq_url], topology) as publisher:
        sent = publish_stream(
            publisher, ledger, count=KILLED_EVENTS, size=200, tag="killed"
        )
        assert confirm_all(publisher, ledger, sent) == []
    env = consumer_env(emq_kms, emq_rabbitmq_url)
    position = tmp_path / "position"
    args = ["--queue", topology.queue, "--exchange", topology.exchange]
    args += ["--queue-type", "stream", "--offset", "first", "--prefetch", "200"]
    args += ["--offset-file", str(position), "--commit-every", str(COMMIT_EVERY)]
    tail = OutputTail(ledger)

    def committed() -> None:
        assert OffsetFile(position).load() is not None

    final = kill_consumers_mid_stream(
        lambda out: processes.consume(env, args, out),
        tail,
        ledger,
        tmp_path,
        kills=3,
        lines_before_kill=1_000,
        after_kill=committed,
    )
    tail.wait_handled(tmp_path, KILLED_EVENTS, "every event to be handled")
    assert final.terminate() == 0
    report = ledger.check()
    assert report["lost"] == 0
    assert report["quarantined"] == {}
    # What a kill re-reads: the events handled since the last commit.
    assert report["duplicates"] <= 3 * COMMIT_EVERY
    assert OffsetFile(position).load() == KILLED_EVENTS - 1
