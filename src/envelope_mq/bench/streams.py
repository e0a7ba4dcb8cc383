"""Stream replay beside plain pika reading the same stream, and its KMS bill.

One stream holds ``events`` events sealed under ``keys`` data keys (the
producer rotates its data key every ``events // keys`` messages, as
``EMQ_DATA_KEY_MAX_MESSAGES`` would). Each round, in a rotating order:

- plain pika reads the stream from ``first`` as a user would without us:
  ``basic_consume`` with ``x-stream-offset``, manual acks, a prefetch of
  1,000, no decryption;
- a fresh :class:`EncryptedConsumer` replays it from ``first``, opening every
  event: a new process, so a cold unwrap cache, and each replay pays its
  Decrypt calls again (counted by the emulator, whose consumer principal may
  only Decrypt).

Targets: the replay reads at least 0.9 x plain pika's rate (median of the
per-round ratios), and a replay costs at most one Decrypt per data key.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import pika

from envelope_mq.bench.lab import Lab
from envelope_mq.bench.plain import PREFETCH
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.streams import OffsetSpec, StreamCursor
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.errors import BrokerError

__all__ = ["PLAIN_READ", "REPLAY", "run_stream_replay"]

PLAIN_READ = "plain pika, stream read from first"
REPLAY = "envelope-mq, stream replay from first"
_SECTION = "stream replay"


def _plain_read(url: str, queue: str, count: int) -> float:
    """Seconds from connecting to the ``count``-th message, plain pika."""
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    finished = started
    seen = 0

    def on_message(channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        nonlocal seen, finished
        channel.basic_ack(delivery_tag=method.delivery_tag)
        seen += 1
        if seen == count:
            finished = time.perf_counter()
            channel.stop_consuming()

    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        channel.basic_consume(
            queue=queue,
            on_message_callback=on_message,
            arguments={"x-stream-offset": "first"},
        )
        channel.start_consuming()
    finally:
        connection.close()
    return finished - started


class _Replay:
    """One fresh consumer's replay of the whole stream."""

    def __init__(self, lab: Lab, topology: Topology, count: int) -> None:
        self.count = count
        self.seen = 0
        self.last = 0.0
        self.consumer = EncryptedConsumer.from_settings(
            lab.settings("consumer"),
            topology,
            self._handle,
            prefetch=PREFETCH,
            stream=StreamCursor(OffsetSpec.parse("first")),
        )

    def _handle(self, _message: ReceivedMessage) -> None:
        self.seen += 1
        self.last = time.perf_counter()

    def seconds(self) -> float:
        started = time.perf_counter()
        self.consumer.run(count=self.count)
        if self.seen != self.count:
            raise BrokerError(f"replayed {self.seen} of {self.count} events")
        return self.last - started


def _publish(lab: Lab, topology: Topology, events: int, keys: int, size: int) -> None:
    settings = dataclasses.replace(
        lab.settings("producer"), data_key_max_messages=max(1, events // keys)
    )
    body = os.urandom(size)
    with EncryptedPublisher.from_settings(settings, topology) as publisher:
        futures = [publisher.publish(body) for _ in range(events)]
        publisher.flush()
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise BrokerError(f"{failed} of {events} stream events were not confirmed")


def run_stream_replay(
    report: Report, lab: Lab, events: int, keys: int, size: int, rounds: int
) -> None:
    """Replay a stream of ``events`` under ``keys`` data keys; figures and targets."""
    topology = lab.broker.stream_topology("replay")
    emulator = lab.kms.emulator
    with Progress("stream replay", 1 + 2 * rounds, announce=True) as bar:
        _publish(lab, topology, events, keys, size)
        bar.advance()
        plain: list[float] = []
        ours: list[float] = []
        decrypts: list[int] = []
        for r in range(rounds):
            for side in (PLAIN_READ, REPLAY) if r % 2 == 0 else (REPLAY, PLAIN_READ):
                if side == PLAIN_READ:
                    seconds = _plain_read(lab.broker.url, topology.queue, events)
                    plain.append(rate(events, seconds))
                else:
                    before = emulator.request_count.get("Decrypt", 0)
                    seconds = _Replay(lab, topology, events).seconds()
                    decrypts.append(emulator.request_count.get("Decrypt", 0) - before)
                    ours.append(rate(events, seconds))
                bar.advance()
    ratios = round_ratios(ours, plain)
    report.add(_SECTION, "events in the stream", events, "")
    report.add(_SECTION, "data keys they are sealed under", keys, "")
    report.add(_SECTION, PLAIN_READ, median(plain), "msg/s", rounds=plain)
    report.add(_SECTION, REPLAY, median(ours), "msg/s", rounds=ours)
    report.add(_SECTION, "replay ÷ plain pika", median(ratios), "x", rounds=ratios)
    report.add(
        _SECTION,
        "KMS Decrypt calls per replay (emulator count)",
        max(decrypts),
        "",
        rounds=[float(d) for d in decrypts],
        note="each replay a fresh consumer: a cold unwrap cache",
    )
    report.check(
        "stream replay ratio (envelope-mq ÷ plain)", median(ratios), ">=", 0.9, "x"
    )
    report.check("KMS Decrypt calls per replay", max(decrypts), "<=", keys)
