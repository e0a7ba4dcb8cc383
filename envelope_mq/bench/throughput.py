"""Throughput beside plain pika: publish and consume, interleaved round by round.

Three sides, each with its own queue on the same broker:

- plain pika: the baselines of :mod:`envelope_mq.bench.plain`;
- envelope-mq: :class:`EncryptedPublisher` (sealing, confirms on, mandatory)
  and :class:`EncryptedConsumer` (opening, acking after the handler);
- envelope-mq with sealing switched off, to tell crypto cost from client cost;
- publish only, two references (:mod:`envelope_mq.bench.ceiling`):
  hand-written pika with pipelined confirms, sending the plain side's
  messages, then envelope-mq's very messages: what the broker allows with
  confirms on, for each.

Each round publishes ``messages`` on every side (in a rotating order), waits
until every queue holds exactly that many, then consumes them all again on
every side, so each queue is drained by its own consumer before the next
round. Rates are per round; ratios are taken within a round, then the median.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from consumer.message import ReceivedMessage
from consumer.worker import EncryptedConsumer
from envelope_mq.bench.ceiling import (
    pika_confirmed_publish,
    plain_message,
    sealed_message,
)
from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.passthrough import PassThroughOpener, PassThroughSealer
from envelope_mq.bench.plain import PREFETCH, plain_consume, plain_publish
from envelope_mq.bench.progress import Progress
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from producer import EncryptedPublisher
from shared.amqp import Topology
from shared.envelope import MessageMeta, Opener, Sealer
from shared.errors import BrokerError
from shared.wire import DATA_KEY_HEADER

__all__ = ["PLAIN", "SEALED", "SIDES", "UNSEALED", "run_throughput"]

PLAIN, SEALED, UNSEALED = "plain pika", "envelope-mq", "envelope-mq, sealing off"
PLAIN_CONFIRMED = "pika, plain messages, pipelined confirms (reference)"
REFERENCE = "pika, envelope-mq's messages, pipelined confirms (reference)"
SIDES = (PLAIN, SEALED, UNSEALED)
PUBLISH_SIDES = (*SIDES, PLAIN_CONFIRMED, REFERENCE)


class _UnsealedPublisher(EncryptedPublisher):
    """EncryptedPublisher with sealing switched off, through its private seam."""

    _sealer_class = PassThroughSealer


@dataclass
class _Consumed:
    """What one of our consumers' handlers saw."""

    count: int = 0
    last: float = 0.0

    def __call__(self, message: ReceivedMessage) -> None:
        self.count += 1
        self.last = time.perf_counter()


class _KeysSeen(_Consumed):
    """Also remembers every distinct wrapped data key (the KMS economy check)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[object] = set()

    def __call__(self, message: ReceivedMessage) -> None:
        self.keys.add(message.headers.get(DATA_KEY_HEADER))
        self.count += 1
        self.last = time.perf_counter()


def _publish_ours(publisher: EncryptedPublisher, body: bytes, count: int) -> float:
    """Seconds to publish ``count`` messages and have every one confirmed."""
    started = time.perf_counter()
    futures: list[Future[str]] = [publisher.publish(body) for _ in range(count)]
    publisher.flush()
    elapsed = time.perf_counter() - started
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise BrokerError(f"{failed} of {count} benchmark messages were not confirmed")
    return elapsed


def _consume_ours(consumer: EncryptedConsumer, seen: _Consumed, count: int) -> float:
    """Seconds from ``run()`` (connect, declare, consume) to the last handler call."""
    before = seen.count
    started = time.perf_counter()
    consumer.run(count=count)
    if seen.count - before != count:
        raise BrokerError(f"consumed {seen.count - before} of {count} messages")
    return seen.last - started


def run_throughput(
    report: Report, lab: Lab, messages: int, size: int, rounds: int
) -> None:
    """Measure publish and consume rates of every side; add figures and targets."""
    broker = lab.broker
    body = os.urandom(size)
    plain_queue = broker.plain_queue("plain")
    confirmed_queue = broker.plain_queue("plain-confirmed")
    topologies: dict[str, Topology] = {
        SEALED: broker.topology("sealed"),
        UNSEALED: broker.topology("unsealed"),
        REFERENCE: broker.topology("reference"),
    }
    queues = {
        PLAIN: plain_queue,
        PLAIN_CONFIRMED: confirmed_queue,
        **{k: t.queue for k, t in topologies.items()},
    }
    sealed = Sealer(lab.data_keys, lab.key_id, CONTEXT).seal(
        body, MessageMeta(str(uuid.uuid4()), int(time.time()))
    )
    references = {
        PLAIN_CONFIRMED: plain_message(confirmed_queue, body),
        REFERENCE: sealed_message(topologies[REFERENCE], sealed),
    }
    keys_seen = _KeysSeen()
    consumed: dict[str, _Consumed] = {SEALED: keys_seen, UNSEALED: _Consumed()}
    plain_count = 0

    def plain_handler(_body: bytes) -> None:
        nonlocal plain_count
        plain_count += 1

    publishers = {
        SEALED: EncryptedPublisher(
            broker.urls,
            lab.data_keys,
            lab.key_id,
            topology=topologies[SEALED],
            context=CONTEXT,
        ),
        UNSEALED: _UnsealedPublisher(
            broker.urls,
            lab.data_keys,
            lab.key_id,
            topology=topologies[UNSEALED],
            context=CONTEXT,
        ),
    }
    consumers = {
        SEALED: EncryptedConsumer(
            broker.urls,
            topologies[SEALED],
            Opener(lab.unwrap),
            consumed[SEALED],
            prefetch=PREFETCH,
        ),
        UNSEALED: EncryptedConsumer(
            broker.urls,
            topologies[UNSEALED],
            PassThroughOpener(lab.key_id, CONTEXT),
            consumed[UNSEALED],
            prefetch=PREFETCH,
        ),
    }
    publish: dict[str, Callable[[], float]] = {
        PLAIN: lambda: plain_publish(broker.url, plain_queue, body, messages),
        SEALED: lambda: _publish_ours(publishers[SEALED], body, messages),
        UNSEALED: lambda: _publish_ours(publishers[UNSEALED], body, messages),
        PLAIN_CONFIRMED: lambda: pika_confirmed_publish(
            broker.url, references[PLAIN_CONFIRMED], messages
        ),
        REFERENCE: lambda: pika_confirmed_publish(
            broker.url, references[REFERENCE], messages
        ),
    }
    consume: dict[str, Callable[[], float]] = {
        PLAIN: lambda: plain_consume(broker.url, plain_queue, messages, plain_handler),
        SEALED: lambda: _consume_ours(consumers[SEALED], consumed[SEALED], messages),
        UNSEALED: lambda: _consume_ours(
            consumers[UNSEALED], consumed[UNSEALED], messages
        ),
    }
    published: dict[str, list[float]] = {side: [] for side in PUBLISH_SIDES}
    received: dict[str, list[float]] = {side: [] for side in SIDES}
    steps = len(PUBLISH_SIDES) + len(SIDES)
    try:
        with Progress("throughput", rounds * steps) as bar:
            for r in range(rounds):
                shift = r % len(PUBLISH_SIDES)  # rotate who goes first
                for side in PUBLISH_SIDES[shift:] + PUBLISH_SIDES[:shift]:
                    seconds = publish[side]()
                    # A round ends when the broker holds every message.
                    broker.wait_for_count(queues[side], messages)
                    published[side].append(rate(messages, seconds))
                    bar.advance()
                for side in references:  # nobody consumes these
                    broker.purge(queues[side])
                shift = r % len(SIDES)
                for side in SIDES[shift:] + SIDES[:shift]:
                    received[side].append(rate(messages, consume[side]()))
                    # Acks are asynchronous: let the queue show empty, then
                    # make sure it is before the next round.
                    broker.wait_for_count(queues[side], 0)
                    broker.purge(queues[side])
                    bar.advance()
    finally:
        for publisher in publishers.values():
            publisher.close()
    lab.keys_seen["throughput consumer"] = len(keys_seen.keys)
    _add(report, "publish, msg/s", published, "publish")
    premise = round_ratios(published[PLAIN_CONFIRMED], published[PLAIN])
    report.add(
        "throughput: publish, msg/s",
        "pika plain, pipelined confirms ÷ plain pika",
        median(premise),
        "x",
        rounds=premise,
        note="issue 4's premise: above 1 if confirms alone cost nothing here",
    )
    ceiling = round_ratios(published[SEALED], published[REFERENCE])
    report.add(
        "throughput: publish, msg/s",
        "envelope-mq ÷ pika with envelope-mq's messages",
        median(ceiling),
        "x",
        rounds=ceiling,
        note="how close to what the broker allows these messages with confirms",
    )
    _add(report, "consume, msg/s", received, "consume")
    report.check(
        "publish ratio (envelope-mq ÷ plain unconfirmed)",
        median(round_ratios(published[SEALED], published[PLAIN])),
        ">=",
        1.0,
        "x",
    )
    report.check(
        "consume ratio (envelope-mq ÷ plain)",
        median(round_ratios(received[SEALED], received[PLAIN])),
        ">=",
        0.9,
        "x",
    )


def _add(report: Report, what: str, rates: dict[str, list[float]], verb: str) -> None:
    section = f"throughput: {what}"
    for side in rates:
        report.add(section, side, median(rates[side]), "msg/s", rounds=rates[side])
    for side in (SEALED, UNSEALED):
        ratios = round_ratios(rates[side], rates[PLAIN])
        report.add(section, f"{side} ÷ plain pika", median(ratios), "x", rounds=ratios)
    crypto = round_ratios(rates[SEALED], rates[UNSEALED])
    report.add(
        section,
        "sealing on ÷ sealing off",
        median(crypto),
        "x",
        rounds=crypto,
        note=f"what the crypto costs the {verb} side",
    )
