"""Latency: publish → handler at a fixed offered rate, p50 / p95 / p99.

The consumer runs in a process of its own, as it would in production, so
producer and consumer do not share an interpreter. The producer publishes on
a fixed schedule (default 1,000 msg/s for 10 s, after one second of warm-up)
and stamps each message with the wall-clock time it was *due*, not the time
it went out: if the producer falls behind, that delay counts too, instead of
being hidden (no coordinated omission). The consumer's handler subtracts that
stamp from its own clock; both processes read the same host clock.
"""

from __future__ import annotations

import multiprocessing
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.plain import PREFETCH
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, percentile
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import Opener
from envelope_mq.shared.errors import MessagingError
from envelope_mq.shared.keycache import UnwrapCache
from envelope_mq.shared.kms import AliyunKms
from envelope_mq.shared.wire_v2 import data_key_token

__all__ = ["run_latency"]

_PROBE, _WARM_UP, _TIMED = 0, 1, 2
_STAMP = struct.Struct(">Bd")  # kind, due time (seconds since the epoch)
_CHILD_TIMEOUT = 120.0


@dataclass(frozen=True)
class ConsumerReport:
    """What a consumer process sends back when it is done."""

    latencies: list[float]
    keys_seen: int


def _stamped(kind: int, due: float, size: int) -> bytes:
    head = _STAMP.pack(kind, due)
    return head + bytes(max(0, size - len(head)))


def consume_latencies(
    settings: Settings, topology: Topology, total: int, pipe: Connection
) -> None:
    """The consumer process: handle ``total`` messages, send back what it measured."""
    try:
        unwrap = UnwrapCache(AliyunKms.from_settings(settings))
        latencies: list[float] = []
        keys: set[object] = set()

        def handler(message: ReceivedMessage) -> None:
            now = time.time()
            kind, due = _STAMP.unpack_from(message.body)
            keys.add(data_key_token(message.headers))
            if kind == _TIMED:
                latencies.append(now - due)
            elif kind == _PROBE:
                pipe.send("ready")

        consumer = EncryptedConsumer(
            settings.rabbitmq_urls, topology, Opener(unwrap), handler, prefetch=PREFETCH
        )
        consumer.run(count=total)
        pipe.send(ConsumerReport(latencies, len(keys)))
    except Exception as exc:  # the process boundary: the parent reports it
        pipe.send(f"consumer failed: {type(exc).__name__}: {exc}")


def _receive(pipe: Connection, what: str) -> Any:
    if not pipe.poll(_CHILD_TIMEOUT):
        raise MessagingError(f"the latency consumer did not report {what} in time")
    answer = pipe.recv()
    if isinstance(answer, str) and answer.startswith("consumer failed"):
        raise MessagingError(answer)
    return answer


def run_latency(
    report: Report, lab: Lab, rate: int, seconds: float, size: int
) -> ConsumerReport:
    """Publish at ``rate`` msg/s for ``seconds``; add the latency percentiles."""
    topology = lab.broker.topology("latency")
    warm_up = rate  # one second
    timed = int(rate * seconds)
    total = 1 + warm_up + timed
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=consume_latencies,
        args=(lab.settings("consumer"), topology, total, theirs),
        name="envelope-mq-bench-latency-consumer",
        daemon=True,  # never outlives the benchmark, whatever happens here
    )
    child.start()
    try:
        with EncryptedPublisher(
            lab.broker.urls,
            lab.data_keys,
            lab.key_id,
            topology=topology,
            context=CONTEXT,
        ) as publisher:
            publisher.send(_stamped(_PROBE, time.time(), size))
            if _receive(ours, "that it is consuming") != "ready":
                raise MessagingError("the latency consumer said something unexpected")
            late = _publish_paced(publisher, rate, warm_up, timed, size)
            publisher.flush()
            result: ConsumerReport = _receive(ours, "its latencies")
    except BaseException:
        child.terminate()  # it would wait for messages that never come
        raise
    finally:
        child.join(_CHILD_TIMEOUT)
        if child.is_alive():
            child.terminate()
            child.join()
    lab.keys_seen["latency consumer"] = result.keys_seen
    millis = [x * 1000 for x in result.latencies]
    section = f"latency, publish → handler at {rate:,} msg/s for {seconds:g} s"
    report.add(section, "messages timed", len(millis), "")
    report.add(section, "p50", median(millis), "ms")
    report.add(section, "p95", percentile(millis, 95), "ms")
    report.add(section, "p99", percentile(millis, 99), "ms")
    report.add(section, "max", max(millis), "ms")
    report.add(
        section,
        "publishes more than 1 ms behind schedule",
        late,
        "",
        note="their delay is in the figures above",
    )
    report.check(
        f"latency p99 at {rate:,} msg/s", percentile(millis, 99), "<=", 20.0, "ms"
    )
    return result


def _publish_paced(
    publisher: EncryptedPublisher, rate: int, warm_up: int, timed: int, size: int
) -> int:
    """Publish on schedule; return how many went out over 1 ms late."""
    period = 1.0 / rate
    # Due times are kept on the monotonic clock and stamped as wall-clock time.
    offset = time.time() - time.perf_counter()
    start = time.perf_counter() + 0.01
    late = 0
    with Progress("latency", warm_up + timed, announce=True) as bar:
        for i in range(warm_up + timed):
            due = start + i * period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.001:
                late += 1
            kind = _WARM_UP if i < warm_up else _TIMED
            publisher.publish(_stamped(kind, offset + due, size))
            bar.advance()
    return late
