"""Throughput beside plain pika: publish and consume, interleaved round by round.

Three sides, each with its own queue on the same broker:

- plain pika: the baselines of :mod:`envelope_mq.bench.plain`;
- envelope-mq: :class:`EncryptedPublisher` (sealing, confirms on, mandatory)
  and :class:`EncryptedConsumer` (opening, acking after the handler);
- envelope-mq with sealing switched off, to tell crypto cost from client cost
  (from a repository checkout only: see :mod:`envelope_mq.bench.unsealed`);
- publish only (:mod:`envelope_mq.bench.ceiling`): hand-written pika with
  pipelined confirms sending plain messages of the user's size, persistent,
  through a topic exchange with ``mandatory`` as ours go (the publish
  target's baseline), and the same pika sending envelope-mq's very messages
  (a reference: what the broker allows such messages with confirms on).

The section runs once per queue type (classic, quorum), every queue of a
run being of that type.

Each round publishes ``messages`` on every side (in a rotating order), waits
until every queue holds exactly that many, then consumes them all again on
every side, so each queue is drained by its own consumer before the next
round. Rates are per round; ratios are taken within a round, then the median.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from envelope_mq.bench.ceiling import (
    pika_confirmed_publish,
    routed_plain_message,
    sealed_message,
)
from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.plain import PREFETCH, plain_consume, plain_publish
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.bench.unsealed import Unsealed, load_unsealed
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import QueueType
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import BrokerError
from envelope_mq.shared.wire_v2 import data_key_token

__all__ = ["PLAIN", "SEALED", "SEALED_V1", "SIDES", "UNSEALED", "run_throughput"]

PLAIN, SEALED, UNSEALED = "plain pika", "envelope-mq", "envelope-mq, sealing off"
# envelope-mq writes wire format v2 by default (SEALED); v1 beside it.
SEALED_V1 = "envelope-mq, wire v1"
PLAIN_CONFIRMED = "pika, plain messages, pipelined confirms"
REFERENCE = "pika, envelope-mq's messages, pipelined confirms (reference)"
SIDES = (PLAIN, SEALED, UNSEALED)


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
        self.keys.add(data_key_token(message.headers))
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


class _Sides:
    """Every side's queue, publisher and consumer, for the whole section."""

    def __init__(
        self,
        lab: Lab,
        body: bytes,
        messages: int,
        unsealed: Unsealed | None,
        kind: QueueType,
        v1: bool,
    ) -> None:
        broker = self._broker = lab.broker
        self.sides = SIDES if unsealed else (PLAIN, SEALED)
        if v1:
            self.sides = (*self.sides, SEALED_V1)
        self.publish_sides = (*self.sides, PLAIN_CONFIRMED, REFERENCE)
        self.keys_seen = _KeysSeen()
        plain = broker.plain_queue(f"plain-{kind}", kind)
        topologies = {
            side: broker.topology(f"{name}-{kind}", queue_type=kind)
            for side, name in (
                (SEALED, "sealed"),
                (SEALED_V1, "sealed-v1"),
                (UNSEALED, "unsealed"),
                (PLAIN_CONFIRMED, "plain-confirmed"),
                (REFERENCE, "reference"),
            )
            if side in self.publish_sides
        }
        self.queues = {
            PLAIN: plain,
            **{side: t.queue for side, t in topologies.items()},
        }
        sealed = Sealer(lab.data_keys, lab.key_id, CONTEXT).seal(
            body, MessageMeta(str(uuid.uuid4()), int(time.time()))
        )
        references = {
            PLAIN_CONFIRMED: routed_plain_message(topologies[PLAIN_CONFIRMED], body),
            REFERENCE: sealed_message(topologies[REFERENCE], sealed),
        }
        self.publishers = {
            SEALED: EncryptedPublisher(
                broker.urls,
                lab.data_keys,
                lab.key_id,
                topology=topologies[SEALED],
                context=CONTEXT,
            ).connect(),
        }
        unsealed_seen, v1_seen = _Consumed(), _Consumed()
        if v1:
            self.publishers[SEALED_V1] = EncryptedPublisher(
                broker.urls,
                lab.data_keys,
                lab.key_id,
                topology=topologies[SEALED_V1],
                context=CONTEXT,
                wire_version=1,
            ).connect()
        consumers = {
            SEALED: EncryptedConsumer(
                broker.urls,
                topologies[SEALED],
                Opener(lab.unwrap),
                self.keys_seen,
                prefetch=PREFETCH,
            ),
        }
        if v1:
            consumers[SEALED_V1] = EncryptedConsumer(
                broker.urls,
                topologies[SEALED_V1],
                Opener(lab.unwrap),
                v1_seen,
                prefetch=PREFETCH,
            )
        if unsealed is not None:
            self.publishers[UNSEALED] = unsealed.publisher_class(
                broker.urls,
                lab.data_keys,
                lab.key_id,
                topology=topologies[UNSEALED],
                context=CONTEXT,
            ).connect()
            consumers[UNSEALED] = EncryptedConsumer(
                broker.urls,
                topologies[UNSEALED],
                unsealed.opener(lab.key_id, CONTEXT),
                unsealed_seen,
                prefetch=PREFETCH,
            )
        url, n = broker.url, messages
        self.publish: dict[str, Callable[[], float]] = {
            PLAIN: lambda: plain_publish(url, plain, body, n),
            SEALED: lambda: _publish_ours(self.publishers[SEALED], body, n),
            UNSEALED: lambda: _publish_ours(self.publishers[UNSEALED], body, n),
            SEALED_V1: lambda: _publish_ours(self.publishers[SEALED_V1], body, n),
            PLAIN_CONFIRMED: lambda: pika_confirmed_publish(
                url, references[PLAIN_CONFIRMED], n
            ),
            REFERENCE: lambda: pika_confirmed_publish(url, references[REFERENCE], n),
        }
        self.consume: dict[str, Callable[[], float]] = {
            PLAIN: lambda: plain_consume(url, plain, n, _plain_handler),
            SEALED: lambda: _consume_ours(consumers[SEALED], self.keys_seen, n),
            UNSEALED: lambda: _consume_ours(consumers[UNSEALED], unsealed_seen, n),
            SEALED_V1: lambda: _consume_ours(consumers[SEALED_V1], v1_seen, n),
        }

    def close(self) -> None:
        """Close the publishers (the consumers close at the end of each run)."""
        for publisher in self.publishers.values():
            publisher.close()


def _plain_handler(body: bytes) -> None:
    """The plain consumer's handler does as little as ours: nothing."""


def _rotated(sides: tuple[str, ...], r: int) -> tuple[str, ...]:
    """``sides`` starting with a different one each round."""
    shift = r % len(sides)
    return sides[shift:] + sides[:shift]


def run_throughput(
    report: Report,
    lab: Lab,
    messages: int,
    size: int,
    rounds: int,
    kind: QueueType = "classic",
    v1: bool = True,
) -> None:
    """Measure publish and consume rates of every side on ``kind`` queues; add
    figures and targets."""
    broker = lab.broker
    unsealed = load_unsealed()
    if isinstance(unsealed, str):
        print(f"bench: sealing off {unsealed}", file=sys.stderr)
    sides = _Sides(
        lab,
        os.urandom(size),
        messages,
        None if isinstance(unsealed, str) else unsealed,
        kind,
        v1,
    )
    published: dict[str, list[float]] = {side: [] for side in sides.publish_sides}
    received: dict[str, list[float]] = {side: [] for side in sides.sides}
    try:
        with Progress(
            f"throughput, {kind}",
            rounds * (len(published) + len(received)),
            announce=True,
        ) as bar:
            for r in range(rounds):
                for side in _rotated(sides.publish_sides, r):
                    seconds = sides.publish[side]()
                    # A round ends when the broker holds every message.
                    broker.wait_for_count(sides.queues[side], messages)
                    published[side].append(rate(messages, seconds))
                    bar.advance()
                for side in (PLAIN_CONFIRMED, REFERENCE):  # nobody consumes these
                    broker.purge(sides.queues[side])
                for side in _rotated(sides.sides, r):
                    received[side].append(rate(messages, sides.consume[side]()))
                    # Acks are asynchronous: let the queue show empty, then
                    # make sure it is before the next round.
                    broker.wait_for_count(sides.queues[side], 0)
                    broker.purge(sides.queues[side])
                    bar.advance()
    finally:
        sides.close()
    lab.keys_seen[f"throughput consumer ({kind})"] = len(sides.keys_seen.keys)
    absent = unsealed if isinstance(unsealed, str) else ""
    _report_publish(report, published, absent, kind)
    _report_sides(report, f"{kind}, consume, msg/s", received, "consume", absent)
    report.check(
        f"consume ratio, {kind} (envelope-mq ÷ plain pika)",
        median(round_ratios(received[SEALED], received[PLAIN])),
        ">=",
        1.0,
        "x",
    )


def _report_publish(
    report: Report, published: dict[str, list[float]], absent: str, kind: str
) -> None:
    section = _report_sides(
        report, f"{kind}, publish, msg/s", published, "publish", absent
    )
    target = round_ratios(published[SEALED], published[PLAIN_CONFIRMED])
    report.add(
        section,
        "envelope-mq ÷ pika, plain messages, pipelined confirms",
        median(target),
        "x",
        rounds=target,
        note="the publish target: same delivery guarantee and routing",
    )
    if SEALED_V1 in published:
        v1 = round_ratios(published[SEALED_V1], published[PLAIN_CONFIRMED])
        report.add(
            section,
            f"{SEALED_V1} ÷ pika, plain messages, pipelined confirms",
            median(v1),
            "x",
            rounds=v1,
            note="v1 beside v2: the five x-emq-* headers",
        )
    premise = round_ratios(published[PLAIN_CONFIRMED], published[PLAIN])
    report.add(
        section,
        "pika plain, pipelined confirms ÷ plain pika",
        median(premise),
        "x",
        rounds=premise,
        note="what confirms, topic routing and mandatory cost the broker",
    )
    ceiling = round_ratios(published[SEALED], published[REFERENCE])
    report.add(
        section,
        "envelope-mq ÷ pika with envelope-mq's messages",
        median(ceiling),
        "x",
        rounds=ceiling,
        note="how close to what the broker allows these messages with confirms",
    )
    report.check(
        f"publish ratio, {kind} (envelope-mq ÷ pika with pipelined confirms, "
        "plain messages)",
        median(target),
        ">=",
        0.9,
        "x",
    )


def _report_sides(
    report: Report, what: str, rates: dict[str, list[float]], verb: str, absent: str
) -> str:
    """``absent``: why the sealing-off side was not measured ("" when it was)."""
    section = f"throughput: {what}"
    if absent:  # its rows stay in the table, saying why they are empty
        rates = {**rates, UNSEALED: []}
    for side in rates:
        value = median(rates[side]) if rates[side] else math.nan
        report.add(
            section,
            side,
            value,
            "msg/s",
            rounds=rates[side],
            note=absent if side == UNSEALED else "",
        )
    for side in (SEALED, SEALED_V1, UNSEALED):
        if side not in rates:
            continue
        ratios = round_ratios(rates[side], rates[PLAIN]) if rates[side] else []
        report.add(
            section,
            f"{side} ÷ plain pika",
            median(ratios) if ratios else math.nan,
            "x",
            rounds=ratios,
            note="its loop has no confirms: for information"
            if verb == "publish"
            else "",
        )
    crypto = round_ratios(rates[SEALED], rates[UNSEALED]) if rates[UNSEALED] else []
    report.add(
        section,
        "sealing on ÷ sealing off",
        median(crypto) if crypto else math.nan,
        "x",
        rounds=crypto,
        note=f"what the crypto costs the {verb} side",
    )
    return section
