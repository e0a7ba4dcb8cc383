"""Streams: EncryptedPublisher into, EncryptedConsumer out of, a RabbitMQ stream.

Real broker (x-queue-type: stream over AMQP 0-9-1), real emulator, real SDK.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest
from envelope_mq.consumer.decisions import Retry
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.outcome import Reason
from envelope_mq.consumer.streams import OffsetFile, OffsetSpec, StreamCursor
from envelope_mq.consumer.transport import (
    QUARANTINE_REASON_HEADER,
    QUARANTINE_STREAM_OFFSET_HEADER,
)
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings

from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


class Reader:
    """A handler that records (stream offset, body) in order; ``fail`` may refuse."""

    def __init__(self, fail: Callable[[ReceivedMessage], bool] | None = None) -> None:
        self.fail = fail or (lambda _m: False)
        self.seen: list[tuple[int, bytes]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, message: ReceivedMessage) -> None:
        with self.lock:
            self.calls += 1
        if self.fail(message):
            raise RuntimeError("handler refuses")
        offset = message.headers["x-stream-offset"]
        assert isinstance(offset, int)
        with self.lock:
            self.seen.append((offset, message.body))

    @property
    def bodies(self) -> list[bytes]:
        with self.lock:
            return [body for _offset, body in self.seen]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Running:
    """Runs a consumer in a thread for a ``with`` block."""

    def __init__(self, consumer: EncryptedConsumer) -> None:
        self.consumer = consumer
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="stream-consumer")

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.consumer.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the consumer did not stop"
        assert not self.errors, self.errors


def publish(settings: Settings, topology: Topology, bodies: list[bytes]) -> None:
    with EncryptedPublisher.from_settings(settings, topology) as publisher:
        for future in [publisher.publish(body) for body in bodies]:
            future.result(TIMEOUT)


def consumer(
    settings: Settings, topology: Topology, handler: Reader, **options: Any
) -> EncryptedConsumer:
    return EncryptedConsumer.from_settings(
        settings, topology, handler, prefetch=50, **options
    )


def numbered(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix} {i}".encode() for i in range(count)]


@pytest.fixture
def stream(emq_stream_topology: Topology) -> Topology:
    return emq_stream_topology


def test_a_stream_is_read_from_first_and_keeps_every_message(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    stream: Topology,
) -> None:
    sent = numbered("event", 40)
    publish(emq_producer_settings, stream, sent)
    for _ in range(2):  # read twice: a stream drops nothing it delivered
        reader = Reader()
        cursor = StreamCursor(OffsetSpec.parse("first"))
        with Running(consumer(emq_consumer_settings, stream, reader, stream=cursor)):
            wait_for(lambda r=reader: len(r.seen) == 40, "every event")
        assert reader.bodies == sent
        assert [o for o, _ in reader.seen] == list(range(40))
        assert cursor.position == 39


def test_offset_specs_an_offset_a_timestamp_last_and_next(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    stream: Topology,
) -> None:
    early = numbered("early", 10)
    publish(emq_producer_settings, stream, early)
    time.sleep(2.0)  # the timestamp spec works on chunks: a chunk of its own
    since = datetime.datetime.now(datetime.UTC)
    time.sleep(1.0)
    late = numbered("late", 10)
    publish(emq_producer_settings, stream, late)

    def read(spec: str, want: int) -> list[bytes]:
        reader = Reader()
        cursor = StreamCursor(OffsetSpec.parse(spec))
        with Running(consumer(emq_consumer_settings, stream, reader, stream=cursor)):
            wait_for(lambda: len(reader.seen) >= want, spec)
            time.sleep(0.3)  # anything more would show up now
        return reader.bodies

    assert read("15", 5) == late[5:]
    assert read(since.isoformat(), 10) == late
    tail = read("last", 1)
    assert tail
    assert tail == (early + late)[-len(tail) :]

    reader = Reader()
    cursor = StreamCursor(OffsetSpec.parse("next"))
    with (
        Running(consumer(emq_consumer_settings, stream, reader, stream=cursor)),
        EncryptedPublisher.from_settings(emq_producer_settings, stream) as pings,
    ):
        # When the subscription starts is the consumer's business: news until
        # it sees some, none of which may be from before.
        deadline = time.monotonic() + TIMEOUT
        while not reader.seen:
            assert time.monotonic() < deadline, "no news came through"
            pings.send(b"news")
            time.sleep(0.2)
    assert set(reader.bodies) == {b"news"}


def test_a_restart_resumes_after_the_committed_offset(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    stream: Topology,
    tmp_path: Path,
) -> None:
    sent = numbered("event", 60)
    publish(emq_producer_settings, stream, sent)
    position = tmp_path / "position"
    first = Reader()
    one = consumer(
        emq_consumer_settings,
        stream,
        first,
        stream=StreamCursor(OffsetSpec.parse("first"), OffsetFile(position)),
    )
    one.run(count=25)  # connects, reads 25, commits on close
    assert position.read_text() == "24\n"

    second = Reader()
    cursor = StreamCursor(OffsetSpec.parse("first"), OffsetFile(position))
    with Running(consumer(emq_consumer_settings, stream, second, stream=cursor)):
        wait_for(lambda: len(second.seen) == 35, "the rest")
    assert first.bodies + second.bodies == sent
    assert OffsetFile(position).load() == 59


def test_an_unopenable_event_is_quarantined_with_its_offset_and_skipped(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_rabbitmq_url: str,
    stream: Topology,
) -> None:
    publish(emq_producer_settings, stream, [b"before"])
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        stream.exchange,
        stream.binding_key,
        b"not sealed",
        pika.BasicProperties(message_id="plain-1", timestamp=int(time.time())),
    )
    publish(emq_producer_settings, stream, [b"after"])

    reader = Reader()
    worker = consumer(
        emq_consumer_settings,
        stream,
        reader,
        stream=StreamCursor(OffsetSpec.parse("first")),
    )
    with Running(worker):
        wait_for(lambda: reader.bodies == [b"before", b"after"], "the good ones")
    assert worker.stats.quarantined == {Reason.MALFORMED: 1}
    method, properties, _body = channel.basic_get(
        stream.quarantine_queue, auto_ack=True
    )
    connection.close()
    assert method is not None
    assert properties.message_id == "plain-1"
    assert properties.headers[QUARANTINE_REASON_HEADER] == "malformed"
    assert properties.headers[QUARANTINE_STREAM_OFFSET_HEADER] == 1
    assert worker.cursor is not None
    assert worker.cursor.position == 2


def test_a_failing_handler_is_retried_in_place_never_nacked(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    stream: Topology,
) -> None:
    publish(emq_producer_settings, stream, [b"flaky", b"broken", b"fine"])
    tries: dict[bytes, int] = {}

    def fail(message: ReceivedMessage) -> bool:
        tries[message.body] = tries.get(message.body, 0) + 1
        if message.body == b"flaky" and tries[message.body] == 1:
            raise Retry()
        return message.body == b"broken"

    reader = Reader(fail)
    worker = consumer(
        emq_consumer_settings,
        stream,
        reader,
        stream=StreamCursor(OffsetSpec.parse("first")),
        max_deliveries=3,
        kms_backoff=_fast_backoff(),
    )
    with Running(worker):
        wait_for(lambda: reader.bodies == [b"flaky", b"fine"], "the rest, in order")
    assert tries == {b"flaky": 2, b"broken": 3, b"fine": 1}
    assert worker.stats.quarantined == {Reason.HANDLER_ERROR: 1}
    assert worker.stats.reconnects == 0  # a nack on a stream closes the connection


def _fast_backoff() -> Any:
    from envelope_mq.consumer.backoff import Backoff

    return Backoff(initial=0.05, cap=0.1)


def test_replaying_10000_events_under_100_data_keys_costs_100_decrypts(
    emq_kms: KmsFixture,
    emq_rabbitmq_urls: tuple[str, ...],
    stream: Topology,
) -> None:
    events, keys = 10_000, 100
    producer = dataclasses.replace(
        emq_kms.settings("producer", emq_rabbitmq_urls),
        data_key_max_messages=events // keys,
    )
    publish(producer, stream, [b"x" * 100] * events)
    emulator = emq_kms.emulator
    assert emulator.request_count.get("GenerateDataKey", 0) == keys
    emulator.reset_request_count()

    reader = Reader()
    worker = consumer(
        emq_kms.settings("consumer", emq_rabbitmq_urls),
        stream,
        reader,
        stream=StreamCursor(OffsetSpec.parse("first")),
    )
    worker.run(count=events)
    assert len(reader.seen) == events
    assert emulator.request_count.get("Decrypt", 0) == keys  # one per data key
