"""EncryptedConsumer against the real broker, the real emulator and the real SDK."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.decisions import Reject, Retry
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.outcome import Reason
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.replay import replay_quarantine
from envelope_mq.consumer.transport import (
    QUARANTINE_DETAIL_HEADER,
    QUARANTINE_KMS_CODE_HEADER,
    QUARANTINE_QUEUE_HEADER,
    QUARANTINE_REASON_HEADER,
)
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared import wire_v2
from envelope_mq.shared.amqp import ConnectionOptions, Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import AliyunKms

from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


@dataclass
class Published:
    """What a test published, by message_id."""

    bodies: dict[str, bytes] = field(default_factory=dict)


class TestPublisher:
    """Seals with the producer's credentials and publishes raw, with confirms.

    Raw pika, not EncryptedPublisher, so that tests can damage a message on
    purpose before it goes out.
    """

    __test__ = False

    def __init__(
        self, settings: Settings, topology: Topology, *, max_messages: int = 2**24
    ) -> None:
        assert settings.kms_key_id is not None
        self.cache = DataKeyCache(
            AliyunKms.from_settings(settings), max_messages=max_messages
        )
        self.key_id = settings.kms_key_id
        self.topology = topology
        self.connection = pika.BlockingConnection(
            pika.URLParameters(settings.rabbitmq_urls[0])
        )
        self.channel = self.connection.channel()
        topology.declare(self.channel)
        self.channel.confirm_delivery()
        self.published = Published()

    def seal(
        self, body: bytes, context: Mapping[str, str] | None = None
    ) -> tuple[bytes, dict[str, Any], MessageMeta]:
        meta = MessageMeta(str(uuid.uuid4()), int(time.time()), "text/plain")
        sealed = Sealer(self.cache, self.key_id, context).seal(body, meta)
        return sealed.body, dict(sealed.headers), meta

    def send_raw(self, body: bytes, headers: dict[str, Any], meta: MessageMeta) -> None:
        self.channel.basic_publish(
            self.topology.exchange,
            self.topology.binding_key,
            body,
            pika.BasicProperties(
                delivery_mode=2,
                message_id=meta.message_id,
                timestamp=meta.timestamp,
                content_type=meta.content_type,
                headers=headers,
            ),
            mandatory=True,
        )

    def send(self, body: bytes, context: Mapping[str, str] | None = None) -> str:
        sealed_body, headers, meta = self.seal(body, context)
        self.send_raw(sealed_body, headers, meta)
        self.published.bodies[meta.message_id] = body
        return meta.message_id

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


class Collector:
    """A handler that records bodies by message_id; ``fail`` decides failures."""

    def __init__(self, fail: Callable[[ReceivedMessage], bool] | None = None) -> None:
        self.fail = fail or (lambda _m: False)
        self.bodies: dict[str, bytes] = {}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, message: ReceivedMessage) -> None:
        with self.lock:
            self.calls[message.message_id] = self.calls.get(message.message_id, 0) + 1
        if self.fail(message):
            raise RuntimeError("handler refuses")
        with self.lock:
            self.bodies[message.message_id] = message.body


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def running(consumer: EncryptedConsumer) -> Iterator[list[BaseException]]:
    """Run ``consumer`` in a thread for the block; stop and join it afterwards."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="consumer-under-test")
    thread.start()
    try:
        yield errors
    finally:
        consumer.stop()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the consumer did not stop"
    assert not errors, errors


def drain(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message off ``queue`` (acknowledged)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        taken = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))
    finally:
        connection.close()


@pytest.fixture
def publisher(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> Iterator[TestPublisher]:
    pub = TestPublisher(emq_producer_settings, emq_amqp_topology)
    yield pub
    pub.close()


def make_consumer(
    settings: Settings, topology: Topology, handler: Collector, **options: Any
) -> EncryptedConsumer:
    return EncryptedConsumer.from_settings(settings, topology, handler, **options)


def test_damaged_messages_are_quarantined_while_good_ones_keep_flowing(
    publisher: TestPublisher,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    good = [publisher.send(f"before {i}".encode()) for i in range(20)]
    # a flipped body bit
    body, headers, meta = publisher.seal(b"tampered")
    flipped = bytes([body[0], *body[1:-1], body[-1] ^ 0x01])
    publisher.send_raw(flipped, headers, meta)
    # one message's body under another message's headers
    body_a, _headers_a, meta_a = publisher.seal(b"swap a", {"tenant": "a"})
    _body_b, headers_b, _meta_b = publisher.seal(b"swap b", {"tenant": "b"})
    publisher.send_raw(body_a, headers_b, meta_a)
    # envelope headers gone altogether
    body_c, _headers_c, meta_c = publisher.seal(b"stripped")
    publisher.send_raw(body_c, {"x-app": "kept"}, meta_c)
    good += [publisher.send(f"after {i}".encode()) for i in range(20)]
    expected_reasons = {
        meta.message_id: Reason.UNDECRYPTABLE,
        meta_a.message_id: Reason.UNDECRYPTABLE,
        meta_c.message_id: Reason.MALFORMED,
    }

    handler = Collector()
    consumer = make_consumer(emq_consumer_settings, emq_amqp_topology, handler)
    with running(consumer):
        wait_for(lambda: len(handler.bodies) == len(good), "the good messages")
        wait_for(lambda: sum(consumer.stats.quarantined.values()) == 3, "quarantine")

    assert handler.bodies == publisher.published.bodies
    assert consumer.stats.requeued == 0
    quarantined = drain(emq_rabbitmq_url, emq_amqp_topology.quarantine_queue)
    assert {
        p.message_id: p.headers[QUARANTINE_REASON_HEADER] for p, _ in quarantined
    } == {k: str(v) for k, v in expected_reasons.items()}
    by_id = {p.message_id: (p, b) for p, b in quarantined}
    tampered_props, tampered_body = by_id[meta.message_id]
    assert tampered_body == flipped  # the original body, untouched
    assert tampered_props.headers["x-emq"] == headers["x-emq"]  # as published
    assert tampered_props.headers[QUARANTINE_QUEUE_HEADER] == emq_amqp_topology.queue
    assert tampered_props.delivery_mode == 2
    assert by_id[meta_c.message_id][0].headers["x-app"] == "kept"
    assert queue_depth(emq_rabbitmq_url, emq_amqp_topology.queue) == 0


def test_kms_outage_mid_stream_holds_messages_and_loses_none(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
) -> None:
    # A new data key every 10 messages, so the consumer needs KMS mid-stream.
    publisher = TestPublisher(emq_producer_settings, emq_amqp_topology, max_messages=10)
    try:
        for i in range(100):
            publisher.send(f"message {i}".encode())
    finally:
        publisher.close()
    outage_started = threading.Event()

    def start_outage_after_25(message: ReceivedMessage) -> bool:
        if len(handler.bodies) == 24 and not outage_started.is_set():
            outage_started.set()
            emq_kms.emulator.faults.set(outage_seconds=3.0)
        return False

    handler = Collector(fail=start_outage_after_25)
    consumer = make_consumer(emq_consumer_settings, emq_amqp_topology, handler)
    with running(consumer):
        wait_for(lambda: len(handler.bodies) == 100, "every message")

    assert outage_started.is_set()
    assert consumer.stats.kms_retries > 0
    assert not consumer.stats.quarantined
    assert handler.bodies == publisher.published.bodies
    assert all(n == 1 for n in handler.calls.values())  # held, never redelivered
    assert queue_depth(emq_rabbitmq_url, emq_amqp_topology.quarantine_queue) == 0


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_failing_handler_is_retried_then_quarantined(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
    queue_type: str,
) -> None:
    topology = Topology(
        queue=emq_amqp_topology.queue,
        exchange=emq_amqp_topology.exchange,
        queue_type=queue_type,  # type: ignore[arg-type]
        queue_arguments=emq_amqp_topology.queue_arguments,
        exchange_auto_delete=True,
    )
    publisher = TestPublisher(emq_producer_settings, topology)
    try:
        poison = publisher.send(b"always fails")
        flaky = publisher.send(b"fails once")
        fine = [publisher.send(f"fine {i}".encode()) for i in range(5)]
    finally:
        publisher.close()

    def fail(message: ReceivedMessage) -> bool:
        if message.message_id == poison:
            return True
        return message.message_id == flaky and handler.calls[flaky] == 1

    handler = Collector(fail=fail)
    consumer = make_consumer(emq_consumer_settings, topology, handler, max_deliveries=3)
    with running(consumer):
        wait_for(
            lambda: consumer.stats.quarantined[Reason.HANDLER_ERROR] == 1, "poison"
        )
        wait_for(lambda: len(handler.bodies) == 6, "the others")

    assert handler.calls[poison] == 3
    assert handler.calls[flaky] == 2
    assert all(handler.calls[m] == 1 for m in fine)
    [(props, _body)] = drain(emq_rabbitmq_url, topology.quarantine_queue)
    assert props.message_id == poison
    assert props.headers[QUARANTINE_REASON_HEADER] == "handler-error"
    assert queue_depth(emq_rabbitmq_url, topology.queue) == 0


def test_context_outside_the_policy_is_quarantined_without_a_kms_call(
    publisher: TestPublisher,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
) -> None:
    allowed = [publisher.send(b"for a", {"tenant": "a"}) for _ in range(3)]
    denied = [publisher.send(b"for b", {"tenant": "b"}) for _ in range(3)]
    emq_kms.emulator.reset_request_count()

    handler = Collector()
    consumer = make_consumer(
        emq_consumer_settings,
        emq_amqp_topology,
        handler,
        policy=ContextPolicy.parse(["tenant=a"]),
    )
    with running(consumer):
        wait_for(lambda: len(handler.bodies) == 3, "tenant a")
        wait_for(lambda: consumer.stats.quarantined[Reason.CONTEXT_DENIED] == 3, "b")

    assert set(handler.bodies) == set(allowed)
    assert emq_kms.emulator.request_count.get("Decrypt", 0) == 1  # tenant a's one key
    reasons = {
        p.message_id: p.headers[QUARANTINE_REASON_HEADER]
        for p, _ in drain(emq_rabbitmq_url, emq_amqp_topology.quarantine_queue)
    }
    assert reasons == dict.fromkeys(denied, "context-denied")


def test_producer_principal_cannot_decrypt_what_it_published(
    publisher: TestPublisher,
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    _body, headers, _meta = publisher.seal(b"for consumers only")
    [copy] = wire_v2.decode(headers["x-emq"]).copies
    with pytest.raises(KmsRequestError) as denied:
        AliyunKms.from_settings(emq_producer_settings).decrypt_data_key(copy.blob, {})
    assert denied.value.code.startswith("Forbidden")

    message_id = publisher.send(b"for consumers only")
    handler = Collector()
    # A consumer wrongly configured with the producer's credentials
    consumer = make_consumer(emq_producer_settings, emq_amqp_topology, handler)
    with running(consumer):
        wait_for(lambda: consumer.stats.quarantined[Reason.KMS_REJECTED] == 1, "it")

    assert handler.calls == {}
    [(props, _body)] = drain(emq_rabbitmq_url, emq_amqp_topology.quarantine_queue)
    assert props.message_id == message_id
    assert props.headers[QUARANTINE_REASON_HEADER] == "kms-rejected"
    assert props.headers[QUARANTINE_KMS_CODE_HEADER] == denied.value.code


def test_replay_returns_quarantined_messages_once_they_can_be_opened(
    publisher: TestPublisher,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    sent = [publisher.send(f"replayed {i}".encode()) for i in range(5)]
    body, _headers, meta = publisher.seal(b"really broken")
    publisher.send_raw(body, {}, meta)  # malformed: refused before any KMS call
    wrong = make_consumer(emq_producer_settings, emq_amqp_topology, Collector())
    with running(wrong):
        wait_for(lambda: sum(wrong.stats.quarantined.values()) == 6, "quarantine")

    result = replay_quarantine(
        emq_rabbitmq_url, emq_amqp_topology, reasons={"kms-rejected"}
    )

    assert result.moved == {"kms-rejected": 5}
    assert result.skipped == 1
    assert queue_depth(emq_rabbitmq_url, emq_amqp_topology.quarantine_queue) == 1
    handler = Collector()
    right = make_consumer(emq_consumer_settings, emq_amqp_topology, handler)
    with running(right):
        wait_for(lambda: len(handler.bodies) == 5, "the replayed messages")
    assert sorted(handler.bodies) == sorted(sent)
    assert not right.stats.quarantined


def test_stop_finishes_the_message_in_hand_and_requeues_the_rest(
    publisher: TestPublisher,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    for i in range(60):
        publisher.send(f"m{i}".encode())

    def stop_at_ten(message: ReceivedMessage) -> bool:
        if len(handler.calls) == 10:
            consumer.stop()
        return False

    handler = Collector(fail=stop_at_ten)
    consumer = make_consumer(
        emq_consumer_settings, emq_amqp_topology, handler, prefetch=50
    )
    stats = consumer.run()

    assert stats.handled == 10
    assert len(handler.bodies) == 10
    wait_for(
        lambda: queue_depth(emq_rabbitmq_url, emq_amqp_topology.queue) == 50, "requeue"
    )


def test_consumer_reconnects_after_the_connection_is_cut(
    publisher: TestPublisher,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    emq_rabbitmq_url: str,
) -> None:
    for i in range(200):
        publisher.send(f"m{i}".encode())
    settings = Settings(
        rabbitmq_urls=(emq_rabbitmq_proxy.rewrite(emq_rabbitmq_url),),
        kms_endpoint=emq_consumer_settings.kms_endpoint,
        access_key_id=emq_consumer_settings.access_key_id,
        access_key_secret=emq_consumer_settings.access_key_secret,
    )

    cut = threading.Event()

    def cut_at_50(message: ReceivedMessage) -> bool:
        if len(handler.calls) == 50 and not cut.is_set():
            cut.set()  # once: redeliveries after the reconnect count no higher
            emq_rabbitmq_proxy.reset_all()
        return False

    handler = Collector(fail=cut_at_50)
    consumer = make_consumer(settings, emq_amqp_topology, handler, prefetch=20)
    with running(consumer):
        wait_for(lambda: len(handler.bodies) == 200, "every message")

    assert consumer.stats.reconnects >= 1
    assert handler.bodies == publisher.published.bodies
    assert queue_depth(emq_rabbitmq_url, emq_amqp_topology.queue) == 0


@pytest.mark.slow
def test_slow_kms_does_not_cost_the_broker_connection(
    publisher: TestPublisher,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_kms: KmsFixture,
) -> None:
    publisher.send(b"needs a slow Decrypt")
    # Decrypt takes three times the heartbeat timeout: a connection left silent
    # for that long is closed by the broker.
    emq_kms.emulator.faults.set(latency_ms=6_000)
    handler = Collector()
    consumer = make_consumer(
        emq_consumer_settings,
        emq_amqp_topology,
        handler,
        connection_options=ConnectionOptions(heartbeat=2),
    )
    with running(consumer):
        wait_for(lambda: len(handler.bodies) == 1, "the message")
        emq_kms.emulator.faults.clear()

    assert consumer.stats.reconnects == 0
    assert handler.calls == {next(iter(publisher.published.bodies)): 1}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_the_handler_decides_with_reject_and_retry(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
    queue_type: str,
) -> None:
    topology = Topology(
        queue=emq_amqp_topology.queue,
        exchange=emq_amqp_topology.exchange,
        queue_type=queue_type,  # type: ignore[arg-type]
        queue_arguments=emq_amqp_topology.queue_arguments,
        exchange_auto_delete=True,
    )
    publisher = TestPublisher(emq_producer_settings, topology)
    try:
        poison = publisher.send(b"refers to no customer")
        later = publisher.send(b"needs the database")
    finally:
        publisher.close()
    calls: dict[str, int] = {}
    handled: list[bytes] = []

    def handler(message: ReceivedMessage) -> None:
        calls[message.message_id] = calls.get(message.message_id, 0) + 1
        if message.message_id == poison:
            raise Reject("no such customer")
        if calls[later] <= 4:  # more times than max_deliveries allows failures
            raise Retry
        handled.append(message.body)

    consumer = EncryptedConsumer.from_settings(
        emq_consumer_settings, topology, handler, max_deliveries=2
    )
    with running(consumer):
        wait_for(lambda: handled == [b"needs the database"], "the retried one")
        wait_for(lambda: consumer.stats.quarantined["rejected"] == 1, "the poison")

    assert calls == {poison: 1, later: 5}
    assert consumer.stats.retried == 4
    assert consumer.stats.requeued == 0
    [(props, _body)] = drain(emq_rabbitmq_url, topology.quarantine_queue)
    assert props.message_id == poison
    assert props.headers[QUARANTINE_REASON_HEADER] == "rejected"
    assert props.headers[QUARANTINE_DETAIL_HEADER] == "no such customer"
