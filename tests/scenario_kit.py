"""What the reliability and security scenarios share (tests/ is on sys.path).

A scenario publishes through the real :class:`EncryptedPublisher`, consumes
with the real :class:`EncryptedConsumer` (in a thread, or ``envelope-mq
consume`` in a subprocess), watches the quarantine queue, and books every
message in a :class:`MessageLedger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.transport import QUARANTINE_REASON_HEADER
from envelope_mq.consumer.worker import ConsumerStats, EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher, TransportOptions
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.errors import KmsUnavailableError, MessageNackedError
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import AliyunKms

from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import PREFIX as LEDGER_PREFIX
from envelope_mq.testing.ledger import MessageLedger

if TYPE_CHECKING:  # the asyncio extra is needed only by the tests that use it
    from envelope_mq.aio import AsyncEncryptedConsumer

__all__ = [
    "FAST_RECONNECT",
    "TRACE_HEADER",
    "AsyncConsumerThread",
    "ConsumerThread",
    "QuarantineWatcher",
    "RawMessage",
    "RawPublisher",
    "Sent",
    "address_of",
    "check_with_reconnects",
    "confirm_all",
    "every",
    "ledger_report_hooks",
    "payload",
    "publish_stream",
    "quick_publisher_options",
    "resetting",
    "run_at_most",
    "scenario_clients",
    "scenario_publisher",
    "scenario_topology",
    "settle",
    "stream_in_background",
]

# A test waits at most this long for anything; reaching it fails the test.
PATIENCE = 240.0
# Scenarios reconnect quickly: the defaults (seconds of backoff) suit production.
FAST_RECONNECT = Backoff(initial=0.1, cap=1.0)
# A header the tests add to find a message whose properties are garbage.
TRACE_HEADER = "x-test-trace"


def quick_publisher_options(**overrides: Any) -> TransportOptions:
    """Publisher options with a short reconnect backoff."""
    fields: dict[str, Any] = {"initial_backoff": 0.1, "max_backoff": 1.0, **overrides}
    return TransportOptions(**fields)


def address_of(url: str) -> tuple[str, int]:
    """(host, port) of an AMQP or HTTP URL."""
    parts = urlsplit(url)
    default = 5672 if parts.scheme.startswith("amqp") else 80
    return parts.hostname or "127.0.0.1", parts.port or default


def scenario_topology(
    queue: str,
    exchange: str,
    *,
    queue_type: str = "classic",
    expires: bool = True,
) -> Topology:
    """The topology of one scenario; on the shared broker its queues expire."""
    arguments = {"x-expires": 600_000} if expires else {}
    return Topology(
        queue=queue,
        exchange=exchange,
        queue_type=queue_type,  # type: ignore[arg-type]
        queue_arguments=arguments,
        exchange_auto_delete=expires,
    )


def payload(tag: str, index: int, size: int) -> bytes:
    """A unique, printable payload of ``size`` bytes (hex text after a label)."""
    label = f"{tag}:{index}:".encode()
    fill = max(0, size - len(label))
    return label + os.urandom((fill + 1) // 2).hex().encode()[:fill]


class Sent:
    """One published message: what it was, and the handle of its latest attempt."""

    __slots__ = ("body", "future", "message_id")

    def __init__(self, message_id: str, body: bytes, future: Future[str]) -> None:
        self.message_id = message_id
        self.body = body
        self.future = future


def publish_stream(
    publisher: EncryptedPublisher,
    ledger: MessageLedger,
    *,
    count: int,
    size: int,
    tag: str,
    start: int = 0,
    pause_every: int = 0,
    pause: float = 0.0,
) -> list[Sent]:
    """Publish ``count`` ledgered messages, pipelined; returns what was sent."""
    sent = []
    for index in range(start, start + count):
        body = payload(tag, index, size)
        message_id = f"{tag}-{index:06d}"
        ledger.published(message_id, body)
        sent.append(
            Sent(message_id, body, publisher.publish(body, message_id=message_id))
        )
        if pause_every and index % pause_every == pause_every - 1:
            time.sleep(pause)
    return sent


def publish_retrying(
    publisher: EncryptedPublisher,
    ledger: MessageLedger,
    *,
    count: int,
    tag: str,
) -> tuple[list[Sent], int]:
    """Publish, retrying a message whose seal KMS refused for now; (sent, refusals)."""
    sent, refusals = [], 0
    for index in range(count):
        body = payload(tag, index, 256)
        message_id = f"{tag}-{index:06d}"
        ledger.published(message_id, body)
        while True:
            try:
                future = publisher.publish(body, message_id=message_id)
            except KmsUnavailableError:
                refusals += 1
                time.sleep(0.05)
                continue
            sent.append(Sent(message_id, body, future))
            break
    return sent, refusals


def confirm_all(
    publisher: EncryptedPublisher,
    ledger: MessageLedger,
    sent: Sequence[Sent],
    *,
    attempts: int = 5,
    timeout: float = PATIENCE,
) -> list[str]:
    """Wait for every confirm; re-publish what the broker nacked, as an application
    must (a nack says the broker did not take the message: same id, same body).

    Returns the errors of the messages still unconfirmed after ``attempts``.
    """
    pending = list(sent)
    for attempt in range(1, attempts + 1):
        errors, nacked = [], []
        deadline = time.monotonic() + timeout
        for item in pending:
            try:
                item.future.result(max(0.0, deadline - time.monotonic()))
            except MessageNackedError:
                nacked.append(item)
            except Exception as exc:  # every other failure is reported as is
                errors.append(f"{item.message_id}: {type(exc).__name__}: {exc}")
        if not nacked or attempt == attempts:
            return errors + [f"{i.message_id}: still nacked" for i in nacked]
        ledger.fault("nacked publishes re-published", len(nacked))
        time.sleep(0.5 * attempt)
        for item in nacked:
            item.future = publisher.publish(item.body, message_id=item.message_id)
        pending = nacked
    return []


def ledger_handler(ledger: MessageLedger) -> Callable[[ReceivedMessage], None]:
    """A consumer handler that books each message in ``ledger``."""

    def handle(message: ReceivedMessage) -> None:
        ledger.handled(message.message_id, message.body)

    return handle


def scenario_publisher(
    kms: KmsFixture, urls: Sequence[str], topology: Topology
) -> EncryptedPublisher:
    """The producer principal's publisher, with the scenarios' quick options."""
    return EncryptedPublisher.from_settings(
        kms.settings("producer", list(urls)),
        topology=topology,
        options=quick_publisher_options(),
    )


def scenario_clients(
    kms: KmsFixture,
    urls: Sequence[str],
    topology: Topology,
    ledger: MessageLedger,
    **consumer_options: Any,
) -> tuple[EncryptedConsumer, EncryptedPublisher]:
    """A consumer booking into ``ledger`` (fast reconnects) and a publisher."""
    consumer = EncryptedConsumer.from_settings(
        kms.settings("consumer", list(urls)),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
        **consumer_options,
    )
    return consumer, scenario_publisher(kms, urls, topology)


def stream_in_background(
    publisher: EncryptedPublisher, ledger: MessageLedger, **stream: Any
) -> tuple[threading.Thread, list[Sent]]:
    """A (not yet started) thread running :func:`publish_stream`, and its list."""
    sent: list[Sent] = []

    def produce() -> None:
        sent.extend(publish_stream(publisher, ledger, **stream))

    return threading.Thread(target=produce, name="producer"), sent


def check_with_reconnects(
    ledger: MessageLedger, publisher: EncryptedPublisher, consumer: EncryptedConsumer
) -> dict[str, Any]:
    """Book both sides' reconnects as faults, then :meth:`MessageLedger.check`."""
    ledger.fault("producer reconnects", publisher.stats().reconnects)
    ledger.fault("consumer reconnects", consumer.stats.reconnects)
    return ledger.check()


def run_at_most(
    consumer: EncryptedConsumer, count: int, seconds: float
) -> ConsumerStats:
    """``consumer.run(count=count)``, stopped after ``seconds`` whatever happened
    (a test that would wait for ever fails on what it received instead)."""
    watchdog = threading.Timer(seconds, consumer.stop)
    watchdog.start()
    try:
        return consumer.run(count=count)
    finally:
        watchdog.cancel()


class ConsumerThread:
    """Runs an EncryptedConsumer in a thread; any exception it raises is kept."""

    def __init__(self, consumer: EncryptedConsumer, name: str = "consumer") -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # reported by __exit__
            self.error = exc

    def __enter__(self) -> ConsumerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.consumer.stop()
        self._thread.join(PATIENCE)
        if self._thread.is_alive():
            raise AssertionError("the consumer did not stop")
        if self.error is not None:
            raise AssertionError(f"the consumer died: {self.error!r}") from self.error


async def _cancel_the_rest() -> None:
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class AsyncConsumerThread:
    """Runs an AsyncEncryptedConsumer on its own event loop in a thread."""

    def __init__(self, consumer: AsyncEncryptedConsumer, ledger: MessageLedger):
        self.consumer = consumer
        self.error: BaseException | None = None
        self._ledger = ledger
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="aio-consumer")

    def _run(self) -> None:
        async def handler(message: ReceivedMessage) -> None:
            self._ledger.handled(message.message_id, message.body)

        async def consume() -> None:
            async with self.consumer:
                await self.consumer.run(handler)

        try:
            self._loop.run_until_complete(consume())
        except BaseException as exc:  # reported by __exit__
            self.error = exc
        finally:
            # As asyncio.run ends: whatever is still pending is cancelled.
            self._loop.run_until_complete(_cancel_the_rest())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> AsyncConsumerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.consumer.stop)
        self._thread.join(PATIENCE)
        if self._thread.is_alive():
            raise AssertionError("the consumer did not stop")
        if self.error is not None:
            raise AssertionError(f"the consumer died: {self.error!r}") from self.error


class QuarantineWatcher:
    """Consumes ``<queue>.quarantine`` in a thread and books each message.

    A message is identified by its message_id property, or by the
    ``x-test-trace`` header when a test damaged the properties themselves, or
    by ``identify(body)`` when given (a test that damaged everything but the
    body). Reconnects through the URL list when a broker goes away.
    """

    def __init__(
        self,
        urls: Sequence[str],
        topology: Topology,
        ledger: MessageLedger,
        *,
        identify: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self._identify = identify
        self._urls = list(urls)
        self._queue = topology.quarantine_queue
        self._topology = topology
        self._ledger = ledger
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="quarantine-watcher", daemon=True
        )
        self.reasons: dict[str, str] = {}
        self.headers: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> QuarantineWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(PATIENCE)

    def _run(self) -> None:
        params = [pika.URLParameters(u) for u in self._urls]
        while not self._stop.is_set():
            try:
                connection = pika.BlockingConnection(params)
            except pika.exceptions.AMQPError:
                self._stop.wait(0.5)
                continue
            try:
                self._consume(connection)
            except pika.exceptions.AMQPError:
                self._stop.wait(0.2)
            finally:
                with contextlib.suppress(Exception):
                    connection.close()

    def _consume(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        self._topology.declare(channel)
        channel.basic_qos(prefetch_count=500)

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            headers = dict(props.headers or {})
            trace = headers.get(TRACE_HEADER)
            key = trace.decode() if isinstance(trace, bytes) else trace
            if self._identify is not None:
                key = self._identify(body)
            elif not isinstance(key, str):
                mid = props.message_id
                key = mid if isinstance(mid, str) else None
            reason = headers.get(QUARANTINE_REASON_HEADER)
            reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            self._ledger.quarantined(key, reason)
            if key is not None:
                self.reasons[key] = reason
                self.headers[key] = headers
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(self._queue, on_message)
        while not self._stop.is_set():
            connection.process_data_events(time_limit=0.2)


@contextlib.contextmanager
def every(
    seconds: float, action: Callable[[], object], name: str = "fault"
) -> Iterator[list[object]]:
    """Run ``action`` every ``seconds`` in a thread for the block; yields results."""
    results: list[object] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            results.append(action())

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join(PATIENCE)


@contextlib.contextmanager
def resetting(
    proxy: FaultProxy,
    ledger: MessageLedger,
    seconds: float,
    fault: str = "connection resets",
) -> Iterator[None]:
    """Reset every connection through ``proxy`` every ``seconds`` for the block,
    booking the resets in ``ledger`` as ``fault``."""

    def reset() -> int:
        resets = proxy.reset_all()
        ledger.fault(fault, resets)
        return resets

    with every(seconds, reset, name="resetter"):
        yield


def settle(ledger: MessageLedger, timeout: float = PATIENCE) -> None:
    """Wait for every published message to be handled or quarantined."""
    if not ledger.wait_settled(timeout):
        raise AssertionError(
            f"{len(ledger) - ledger.settled} of {len(ledger)} messages not settled "
            f"after {timeout:.0f} s; first: {ledger.outstanding()} "
            f"(report: {ledger.report()})"
        )


@dataclass
class RawMessage:
    """A sealed message as it goes on the wire, free to be damaged by a test."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]  # message_id, timestamp, content_type, ...

    def __repr__(self) -> str:
        # Short: Hypothesis prints examples, and bodies are no one's business.
        names = ", ".join(sorted(self.headers))
        return f"RawMessage(<{len(self.body)} bytes>, headers=[{names}])"

    def copy(self) -> RawMessage:
        """A copy whose headers and properties can be changed independently."""
        return RawMessage(self.body, dict(self.headers), dict(self.properties))


class RawPublisher:
    """Seals with the producer's credentials, publishes with raw pika and confirms.

    Not EncryptedPublisher: a test needs to damage a message after sealing it.
    Every message carries the unauthenticated ``x-test-trace`` header, so the
    ledger can find it whatever was done to its properties.
    """

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        key_id: str | None = None,
        max_messages: int = 2**24,
        wire_version: int = 1,
    ) -> None:
        # v1 by default: the hostile-header and tamper tests edit its five
        # headers one by one; wire_version=2 writes the producer's default.
        self.wire_version = wire_version
        self._kms = AliyunKms.from_settings(settings)
        self.cache = DataKeyCache(self._kms, max_messages=max_messages)
        self.key_id = key_id or settings.kms_key_id or ""
        self.topology = topology
        self.connection = pika.BlockingConnection(
            pika.URLParameters(settings.rabbitmq_urls[0])
        )
        self.channel = self.connection.channel()
        topology.declare(self.channel)
        self.channel.confirm_delivery()
        self._sealers: dict[str, Sealer] = {}

    def seal(
        self,
        body: bytes,
        message_id: str,
        *,
        context: Mapping[str, str] | None = None,
        timestamp: int | None = None,
    ) -> RawMessage:
        """Seal ``body`` as the producer would."""
        slot = repr(sorted((context or {}).items()))
        sealer = self._sealers.get(slot)
        if sealer is None:
            sealer = self._sealers[slot] = Sealer(
                self.cache, self.key_id, context, wire_version=self.wire_version
            )
        meta = MessageMeta(
            message_id,
            int(time.time()) if timestamp is None else timestamp,
            "text/plain",
        )
        sealed = sealer.seal(body, meta)
        return RawMessage(
            sealed.body,
            dict(sealed.headers),
            {
                "message_id": meta.message_id,
                "timestamp": meta.timestamp,
                "content_type": meta.content_type,
                "content_encoding": meta.content_encoding,
                "type": meta.type,
            },
        )

    def send(self, message: RawMessage, trace: str) -> None:
        """Publish ``message`` as it is, persistent and mandatory; wait for the ack."""
        headers = {**message.headers, TRACE_HEADER: trace}
        self.channel.basic_publish(
            self.topology.exchange,
            self.topology.binding_key,
            message.body,
            pika.BasicProperties(
                delivery_mode=2, headers=headers, **message.properties
            ),
            mandatory=True,
        )

    def close(self) -> None:
        """Close the connection and the KMS client (whose keep-alive sockets
        would otherwise close only when collected: a ResourceWarning that the
        suite's warnings-as-errors turns into a failed run)."""
        with contextlib.suppress(Exception):
            self.connection.close()
        self._kms.close()

    def __enter__(self) -> RawPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ledger_report_hooks(title: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """pytest hooks that repeat the ledgers' (and leakcheck's) lines in the summary.

    A conftest assigns them to ``pytest_runtest_logreport`` and
    ``pytest_terminal_summary``, so a CI log shows the figures of every
    scenario even when output capture hid them.
    """
    lines: list[str] = []

    def runtest_logreport(report: Any) -> None:
        if report.when == "call":
            lines.extend(
                line
                for line in report.capstdout.splitlines()
                if line.startswith((f"{LEDGER_PREFIX} ", "leakcheck: "))
            )

    def terminal_summary(terminalreporter: Any) -> None:
        if lines:
            terminalreporter.section(f"{title} ledgers")
            for line in lines:
                terminalreporter.write_line(line)

    return runtest_logreport, terminal_summary
