"""Memory: the peak RSS of a consumer process holding 1,024 cached data keys.

The producer seals the messages under 1,024 distinct data keys (its cache
rotates after a fixed number of messages), the queue is filled first, and
then a fresh consumer process (real KMS client, prefetch 1,000) consumes it
all. Its unwrap cache ends up full, and the process reports its own peak RSS
(VmHWM), imports, connection and in-flight deliveries included.
"""

from __future__ import annotations

import multiprocessing
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection

from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.plain import PREFETCH
from envelope_mq.bench.report import Report
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import Opener
from envelope_mq.shared.errors import BrokerError, MessagingError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms

__all__ = ["run_memory"]

_CHILD_TIMEOUT = 300.0


@dataclass(frozen=True)
class MemoryReport:
    """What the consumer process measured of itself."""

    peak_before_kib: int  # after imports, KMS client and cache, before consuming
    peak_kib: int
    cached_keys: int
    decrypt_calls: int


def _peak_kib() -> int:
    """This process's peak resident set size, KiB.

    On Linux ``ru_maxrss`` survives ``execve``: a spawned child would report
    its parent's peak. VmHWM belongs to the new process image alone.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def consume_for_memory(
    settings: Settings, topology: Topology, total: int, keys: int, pipe: Connection
) -> None:
    """The consumer process: consume ``total`` messages, report peak RSS."""
    try:
        unwrap = UnwrapCache(AliyunKms.from_settings(settings), max_entries=keys)

        def handler(message: ReceivedMessage) -> None:
            """Does nothing: the cost measured is the consumer's own."""

        consumer = EncryptedConsumer(
            settings.rabbitmq_urls, topology, Opener(unwrap), handler, prefetch=PREFETCH
        )
        before = _peak_kib()
        consumer.run(count=total)
        pipe.send(
            MemoryReport(before, _peak_kib(), len(unwrap), unwrap.stats().decrypt_calls)
        )
    except Exception as exc:  # the process boundary: the parent reports it
        pipe.send(f"consumer failed: {type(exc).__name__}: {exc}")


def run_memory(report: Report, lab: Lab, keys: int, per_key: int, size: int) -> None:
    """Fill a queue under ``keys`` data keys, consume it in a fresh process."""
    topology = lab.broker.topology("memory")
    total = keys * per_key
    # A cache of its own: rotating every per_key messages is this section's
    # deliberate KMS load, kept apart from the producer the economy describes.
    data_keys = DataKeyCache(
        AliyunKms.from_settings(lab.settings("producer")), max_messages=per_key
    )
    body = bytes(size)
    publisher = EncryptedPublisher(
        lab.broker.urls, data_keys, lab.key_id, topology=topology, context=CONTEXT
    )
    with (
        Progress(f"memory: fill under {keys:,} data keys", total, announce=True) as bar,
        publisher,
    ):
        for _ in range(total):
            publisher.publish(body)
            bar.advance()
        publisher.flush()
    lab.broker.wait_for_count(topology.queue, total)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=consume_for_memory,
        args=(lab.settings("consumer"), topology, total, keys, theirs),
        name="envelope-mq-bench-memory-consumer",
        daemon=True,  # never outlives the benchmark, whatever happens here
    )
    with Progress("memory: consume", 1, announce=True) as bar:
        child.start()
        try:
            if not ours.poll(_CHILD_TIMEOUT):
                raise BrokerError("the memory consumer did not finish in time")
            answer = ours.recv()
        except BaseException:
            child.terminate()
            raise
        finally:
            child.join(_CHILD_TIMEOUT)
            if child.is_alive():
                child.terminate()
                child.join()
        bar.advance()
    if not isinstance(answer, MemoryReport):
        raise MessagingError(str(answer))
    if answer.cached_keys != keys:
        # The figure would not mean what its name says.
        raise MessagingError(
            f"the memory consumer held {answer.cached_keys} keys, not {keys}"
        )
    section = f"memory: one consumer process, {keys:,} data keys"
    report.add(section, "data keys cached at the end", answer.cached_keys, "")
    report.add(section, "KMS Decrypt calls", answer.decrypt_calls, "")
    report.add(
        section, "peak RSS before consuming", answer.peak_before_kib / 1024, "MiB"
    )
    report.add(section, "peak RSS", answer.peak_kib / 1024, "MiB")
    report.check(
        f"consumer peak RSS with {keys:,} cached keys",
        answer.peak_kib / 1024,
        "<=",
        100.0,
        "MiB",
    )
