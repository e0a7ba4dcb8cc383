"""The demo's job: publish N messages, show one as stored, consume and verify all."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.peek import StoredMessage, peek
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import Opener
from envelope_mq.shared.keycache import (
    DataKeyCache,
    DataKeyCacheStats,
    UnwrapCache,
    UnwrapCacheStats,
)
from envelope_mq.shared.kms import KeyProvider
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks

__all__ = ["DemoResult", "DemoRoles", "run_demo"]

CONTEXT = {"app": "envelope-mq-demo"}
# Queues of a demo run vanish a minute after their last use, even after a crash.
QUEUE_EXPIRES_MS = 60_000


@dataclass(frozen=True)
class DemoRoles:
    """The KMS side of the demo: one master key, a client per role."""

    key_id: str
    producer_kms: KeyProvider
    consumer_kms: KeyProvider


@dataclass
class DemoResult:
    """What happened, for the summary; ``ok`` only when every message verified."""

    messages: int
    size: int
    queue: str
    publish_seconds: float = 0.0
    consume_seconds: float = 0.0
    verified: int = 0
    mismatched: int = 0
    unexpected: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    producer_cache: DataKeyCacheStats | None = None
    consumer_cache: UnwrapCacheStats | None = None
    stored: StoredMessage | None = None
    read: ReceivedMessage | None = None

    @property
    def ok(self) -> bool:
        """Every message came back, intact, and nothing else did."""
        return (
            self.verified == self.messages
            and not self.mismatched
            and not self.unexpected
            and not self.quarantined
        )


def _payload(seq: int, size: int) -> bytes:
    head = f'{{"seq":{seq},"note":"hello from envelope-mq","pad":"'.encode()
    tail = b'"}'
    pad = max(size - len(head) - len(tail), 0)
    # Random text, so that every message differs and compression would not help.
    return head + os.urandom(pad).hex().encode()[:pad] + tail


def run_demo(
    urls: Sequence[str],
    roles: DemoRoles,
    *,
    messages: int,
    size: int,
    timeout: float | None = None,
    metrics: MetricsHooks = NULL_METRICS,
) -> DemoResult:
    """Publish ``messages`` payloads of ``size`` bytes, then consume and verify them.

    ``metrics`` records both sides (one process, one set of metrics).
    """
    topology = Topology(
        queue=f"envelope-mq-demo-{uuid.uuid4().hex[:8]}",
        queue_arguments={"x-expires": QUEUE_EXPIRES_MS},
    )
    result = DemoResult(messages=messages, size=size, queue=topology.queue)
    digests = _publish(urls, roles, topology, messages, size, result, metrics)
    stored = peek(urls, topology.queue)
    result.stored = stored[0] if stored else None
    _consume(urls, roles, topology, digests, result, timeout, metrics)
    return result


def _publish(
    urls: Sequence[str],
    roles: DemoRoles,
    topology: Topology,
    messages: int,
    size: int,
    result: DemoResult,
    metrics: MetricsHooks,
) -> dict[str, bytes]:
    cache = DataKeyCache(metrics.instrument_provider(roles.producer_kms))
    digests: dict[str, bytes] = {}
    progress = Progress("publish", messages, show_after=1.0)
    start = time.perf_counter()
    with EncryptedPublisher(
        urls, cache, roles.key_id, topology=topology, context=CONTEXT, metrics=metrics
    ) as publisher:
        futures = []
        for seq in range(messages):
            body = _payload(seq, size)
            message_id = str(uuid.uuid4())
            digests[message_id] = hashlib.blake2b(body, digest_size=16).digest()
            futures.append(
                publisher.publish(
                    body, message_id=message_id, content_type="application/json"
                )
            )
            progress.advance()
        publisher.flush()
        for future in futures:
            future.result()  # raises if the broker refused one
    result.publish_seconds = time.perf_counter() - start
    progress.close()
    result.producer_cache = cache.stats()
    return digests


def _consume(
    urls: Sequence[str],
    roles: DemoRoles,
    topology: Topology,
    digests: Mapping[str, bytes],
    result: DemoResult,
    timeout: float | None,
    metrics: MetricsHooks,
) -> None:
    kms = KeepAliveProvider(metrics.instrument_provider(roles.consumer_kms))
    cache = UnwrapCache(kms)
    metrics.watch_cache(cache)
    progress = Progress("consume", len(digests), show_after=1.0)
    seen: set[str] = set()
    peeked = result.stored.message_id if result.stored else None

    def verify(message: ReceivedMessage) -> None:
        expected = digests.get(message.message_id)
        if expected is None:
            result.unexpected += 1
        elif message.message_id not in seen:
            seen.add(message.message_id)
            digest = hashlib.blake2b(message.body, digest_size=16).digest()
            if digest == expected and message.context == CONTEXT:
                result.verified += 1
            else:
                result.mismatched += 1
        if message.message_id == peeked:
            result.read = message
        progress.advance()
        if len(seen) == len(digests):
            consumer.stop()

    consumer = EncryptedConsumer(
        urls, topology, Opener(cache), verify, keep_alive=kms, metrics=metrics
    )
    # A watchdog, so that a lost message ends the demo with an error, not a hang.
    limit = timeout if timeout is not None else 60.0 + len(digests) / 200
    watchdog = threading.Timer(limit, consumer.stop)
    watchdog.daemon = True
    start = time.perf_counter()
    watchdog.start()
    try:
        stats = consumer.run()
    finally:
        watchdog.cancel()
    result.consume_seconds = time.perf_counter() - start
    progress.close()
    result.quarantined = stats.quarantined
    result.consumer_cache = cache.stats()
