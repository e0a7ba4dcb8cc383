from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from broker_kit import drain, queue_depth
from envelope_mq.producer import EncryptedPublisher, TransportOptions
from envelope_mq.producer.transport import ConfirmingTransport
from envelope_mq.shared import wire_v2
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Opener, SealedMessage, Sealer
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    KmsError,
    KmsRequestError,
    MessageUnroutableError,
    PublishNotConfirmedError,
)
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms, InMemoryKeyProvider

from envelope_mq.testing.faultproxy import FaultProxy, Hold, ResetPeer
from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

Received = tuple[Any, bytes]  # (pika BasicProperties, body)


@contextmanager
def publisher(
    settings: Settings, topology: Topology | None, **options: Any
) -> Iterator[EncryptedPublisher]:
    # One KMS attempt: the outage tests should not sit through retries.
    with (
        AliyunKms.from_settings(settings, max_attempts=1, read_timeout=2.0) as kms,
        EncryptedPublisher.from_settings(
            settings,
            topology=topology,
            provider=kms,
            options=TransportOptions(**options) if options else None,
        ) as pub,
    ):
        yield pub


def wait_for_depth(urls: tuple[str, ...], queue: str, depth: int) -> None:
    deadline = time.monotonic() + 60
    while queue_depth(urls, queue) < depth:
        assert time.monotonic() < deadline, f"{queue} never reached {depth} messages"
        time.sleep(0.05)


def open_message(consumer_settings: Settings, properties: Any, body: bytes) -> bytes:
    meta = MessageMeta(
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        type=properties.type,
    )
    with AliyunKms.from_settings(consumer_settings) as kms:
        reader = Opener(UnwrapCache(kms))
        return reader.open(body, reader.parse(properties.headers), meta).plaintext


def test_a_confirmed_message_lands_sealed_with_the_envelope_headers(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_kms: KmsFixture,
) -> None:
    plaintext = b"the quarterly numbers"
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        message_id = pub.send(
            plaintext,
            context={"tenant": "a"},
            content_type="text/plain",
            content_encoding="utf-8",
            type="report",
        )
    [(properties, body)] = drain(
        emq_consumer_settings.rabbitmq_urls, emq_amqp_topology.queue
    )
    # wire format v2 by default: one byte-array header (AMQP "x")
    assert set(properties.headers) == {wire_v2.HEADER}
    decoded = wire_v2.decode(properties.headers[wire_v2.HEADER])
    assert [copy.key_id for copy in decoded.copies] == [emq_kms.key_id]
    assert decoded.context_json == '{"tenant":"a"}'
    assert plaintext not in body
    assert properties.message_id == message_id
    assert properties.delivery_mode == 2
    assert abs(properties.timestamp - time.time()) < 3600
    assert (properties.content_type, properties.content_encoding, properties.type) == (
        "text/plain",
        "utf-8",
        "report",
    )
    assert open_message(emq_consumer_settings, properties, body) == plaintext


def test_the_producer_principal_cannot_decrypt_what_it_published(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        pub.send(b"secret")
    [(properties, _body)] = drain(
        emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue
    )
    [copy] = wire_v2.decode(properties.headers[wire_v2.HEADER]).copies
    with (
        AliyunKms.from_settings(emq_producer_settings) as kms,
        pytest.raises(KmsRequestError),
    ):
        kms.decrypt_data_key(copy.blob, {})


def test_an_unroutable_publish_fails_its_future(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        routed = pub.publish(b"kept")
        lost = pub.publish(b"nowhere to go", routing_key="no.such.binding")
        with pytest.raises(MessageUnroutableError) as caught:
            lost.result(timeout=30)
        assert caught.value.message_id
        assert routed.result(timeout=30)
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue) == 1
    )


def test_flush_waits_for_every_confirm(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        futures = [pub.publish(b"m%d" % n) for n in range(500)]
        assert pub.flush(timeout=60)
        assert all(f.done() for f in futures)
        assert pub.stats().confirmed == 500


def test_ten_thousand_messages_are_all_confirmed_and_queued(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        futures = [pub.publish(b"x" * 1024) for _ in range(10_000)]
        pub.flush()
    ids = {f.result(timeout=0) for f in futures}
    assert len(ids) == 10_000
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue)
        == 10_000
    )


def test_a_quorum_queue_takes_sealed_messages(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    topology = replace(emq_amqp_topology, queue_type="quorum")
    with publisher(emq_producer_settings, topology) as pub:
        pub.send(b"replicated")
    [(properties, body)] = drain(emq_producer_settings.rabbitmq_urls, topology.queue)
    assert open_message(emq_consumer_settings, properties, body) == b"replicated"


def test_kms_down_without_a_cached_key_fails_the_publish_and_sends_nothing(
    emq_producer_settings: Settings, emq_amqp_topology: Topology, emq_kms: KmsFixture
) -> None:
    emq_kms.emulator.faults.set(outage_seconds=3600)
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        with pytest.raises(KmsError):
            pub.publish(b"must never leave unsealed")
        assert pub.stats().published == 0
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue) == 0
    )


def test_kms_down_with_a_cached_key_keeps_publishing(
    emq_producer_settings: Settings, emq_amqp_topology: Topology, emq_kms: KmsFixture
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        pub.send(b"fetches the data key")
        emq_kms.emulator.faults.set(outage_seconds=3600)
        futures = [pub.publish(b"during the outage %d" % n) for n in range(100)]
        assert pub.flush(timeout=60)
    assert all(f.exception() is None for f in futures)
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue) == 101
    )


def through(proxy: FaultProxy, settings: Settings) -> Settings:
    return replace(settings, rabbitmq_urls=(proxy.rewrite(settings.rabbitmq_urls[0]),))


def test_unconfirmed_messages_are_republished_unchanged_after_a_connection_loss(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    # The broker takes every message but its confirms are held back, so all of
    # them are unconfirmed when the connection drops: each must be published
    # again, byte for byte, and arrive twice (at-least-once).
    urls = emq_producer_settings.rabbitmq_urls
    settings = through(emq_rabbitmq_proxy, emq_producer_settings)
    with publisher(settings, emq_amqp_topology, initial_backoff=0.05) as pub:
        pub.send(b"warm-up: connection, topology and data key")
        drain(urls, emq_amqp_topology.queue)
        held = emq_rabbitmq_proxy.add(Hold())  # the broker's replies, confirms included
        futures = [pub.publish(b"payload %d" % n) for n in range(300)]
        wait_for_depth(urls, emq_amqp_topology.queue, 300)
        assert not any(f.done() for f in futures)
        emq_rabbitmq_proxy.reset_all()  # the held confirms go with their connection
        emq_rabbitmq_proxy.remove(held)
        assert pub.flush(timeout=60)
        stats = pub.stats()
    assert all(f.exception() is None for f in futures)
    assert stats.republished == 300
    assert stats.reconnects == 1
    copies: dict[str, list[Received]] = {}
    for properties, body in drain(urls, emq_amqp_topology.queue):
        copies.setdefault(properties.message_id, []).append((properties, body))
    assert set(copies) == {f.result() for f in futures}
    for (first, first_body), (second, second_body) in copies.values():
        assert first_body == second_body
        assert first.headers == second.headers
        assert first.timestamp == second.timestamp


def test_every_message_is_confirmed_across_a_connection_cut_mid_stream(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    urls = emq_producer_settings.rabbitmq_urls
    futures: list[Future[str]] = []
    settings = through(emq_rabbitmq_proxy, emq_producer_settings)
    with publisher(settings, emq_amqp_topology, initial_backoff=0.05) as pub:
        for n in range(3000):
            futures.append(pub.publish(b"stream %d" % n))
            if n == 1000:
                emq_rabbitmq_proxy.reset_all()
        assert pub.flush(timeout=60)
        reconnects = pub.stats().reconnects
    assert reconnects >= 1
    assert all(f.exception() is None for f in futures)
    stored = {
        properties.message_id for properties, _ in drain(urls, emq_amqp_topology.queue)
    }
    assert stored == {f.result() for f in futures}


def test_the_next_url_is_used_when_the_first_broker_is_down(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    emq_rabbitmq_proxy.add(ResetPeer())  # every connection is reset as accepted
    dead = emq_rabbitmq_proxy.rewrite(emq_producer_settings.rabbitmq_urls[0])
    settings = replace(
        emq_producer_settings,
        rabbitmq_urls=(dead, *emq_producer_settings.rabbitmq_urls),
    )
    with publisher(settings, emq_amqp_topology) as pub:
        assert pub.send(b"failover")


def test_a_message_larger_than_a_frame_is_split_and_opens_intact(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    plaintext = bytes(range(256)) * 4096  # 1 MiB: eight body frames
    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        pub.send(plaintext)
    [(properties, body)] = drain(
        emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue
    )
    assert len(body) == len(plaintext) + 28
    assert open_message(emq_consumer_settings, properties, body) == plaintext


def test_threads_may_share_one_publisher(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    futures: list[Future[str]] = []

    def publish_some(pub: EncryptedPublisher, n: int) -> None:
        futures.extend(pub.publish(b"thread %d" % n) for _ in range(500))

    with publisher(emq_producer_settings, emq_amqp_topology) as pub:
        threads = [
            threading.Thread(target=publish_some, args=(pub, n)) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert pub.flush(timeout=60)
    assert len({f.result(timeout=0) for f in futures}) == 2000
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue)
        == 2000
    )


def test_a_topology_that_contradicts_the_broker_fails_at_start(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    contradicting = replace(emq_amqp_topology, queue_arguments={})
    connection = connect_blocking(emq_producer_settings.rabbitmq_urls)
    emq_amqp_topology.declare(connection.channel())
    connection.close()
    with (
        pytest.raises(BrokerError, match="PRECONDITION_FAILED"),
        publisher(emq_producer_settings, contradicting),
    ):
        pass


def test_a_refused_publish_fails_and_the_channel_comes_back_with_the_topology(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with publisher(
        emq_producer_settings, emq_amqp_topology, initial_backoff=0.05
    ) as pub:
        pub.send(b"before")
        connection = connect_blocking(emq_producer_settings.rabbitmq_urls)
        connection.channel().exchange_delete(emq_amqp_topology.exchange)
        connection.close()
        with pytest.raises(BrokerError, match="404"):
            pub.send(b"to an exchange that is gone")
        assert pub.send(b"after the channel and topology are back")
    assert (
        queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue) == 2
    )


def test_pending_messages_fail_when_the_broker_stays_away_too_long(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    settings = through(emq_rabbitmq_proxy, emq_producer_settings)
    with publisher(
        settings, emq_amqp_topology, reconnect_timeout=0.5, max_backoff=0.2
    ) as pub:
        pub.send(b"connected")
        emq_rabbitmq_proxy.add(Hold())
        pending = pub.publish(b"never confirmed")
        emq_rabbitmq_proxy.add(ResetPeer())  # new connections are reset as accepted
        emq_rabbitmq_proxy.reset_all()
        with pytest.raises(BrokerUnavailableError):
            pending.result(timeout=60)
        with pytest.raises(BrokerUnavailableError):
            pub.publish(b"after giving up")


def sealed_message(n: int) -> SealedMessage:
    sealer = Sealer(DataKeyCache(InMemoryKeyProvider()), "key")
    return sealer.seal(b"m", MessageMeta(f"id-{n}", int(time.time())))


def test_a_declaration_failing_after_a_reconnect_is_retried(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    declarations: list[int] = []

    def declare_failing_once_after_reconnect(channel: Any, on_done: Any) -> None:
        declarations.append(1)
        if len(declarations) == 2:
            raise ValueError("raised inside a pika callback")
        emq_amqp_topology.declare_async(channel, on_done)

    transport = ConfirmingTransport(
        through(emq_rabbitmq_proxy, emq_producer_settings).rabbitmq_urls,
        declare=declare_failing_once_after_reconnect,
        options=TransportOptions(initial_backoff=0.05),
    )
    transport.start()
    try:
        for n in range(2):
            future = transport.submit(
                emq_amqp_topology.exchange,
                emq_amqp_topology.binding_key,
                sealed_message(n),
            )
            assert future.result(timeout=60) == f"id-{n}"
            emq_rabbitmq_proxy.reset_all()
    finally:
        transport.close(timeout=60)
    assert len(declarations) == 3


class ReconnectRaisingOnce(ConfirmingTransport):
    """Fault injection: the first reconnect attempt raises inside the I/O loop,
    as pika does (ValueError from getpeername) when a connection is reset
    while being set up."""

    connects = 0

    def _connect(self) -> None:
        self.connects += 1
        if self.connects == 2:
            raise ValueError("Expected connected socket, but getpeername() failed")
        super()._connect()


def test_an_error_escaping_the_io_loop_does_not_stop_the_publisher(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
) -> None:
    transport = ReconnectRaisingOnce(
        through(emq_rabbitmq_proxy, emq_producer_settings).rabbitmq_urls,
        declare=emq_amqp_topology.declare_async,
        options=TransportOptions(initial_backoff=0.05, max_backoff=0.2),
    )
    transport.start()
    try:
        first = transport.submit(
            emq_amqp_topology.exchange, emq_amqp_topology.binding_key, sealed_message(0)
        )
        assert first.result(timeout=60) == "id-0"
        emq_rabbitmq_proxy.reset_all()
        second = transport.submit(
            emq_amqp_topology.exchange, emq_amqp_topology.binding_key, sealed_message(1)
        )
        assert second.result(timeout=60) == "id-1"
    finally:
        transport.close(timeout=60)
    assert transport.connects == 3


def test_without_a_topology_a_missing_exchange_fails_the_connect(
    emq_producer_settings: Settings,
) -> None:
    missing = f"emq-test-missing-{time.monotonic_ns()}"
    with (
        pytest.raises(BrokerError, match=f"404.*{missing}"),
        EncryptedPublisher.from_settings(emq_producer_settings, exchange=missing),
    ):
        pass


def test_failures_nobody_looked_at_are_logged_once_and_raised_by_close(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = connect_blocking(emq_producer_settings.rabbitmq_urls)
    emq_amqp_topology.declare(connection.channel())
    connection.close()
    # No topology: the exchange exists, but nothing is bound to this key.
    publisher = EncryptedPublisher.from_settings(
        emq_producer_settings, exchange=emq_amqp_topology.exchange
    )
    with caplog.at_level("WARNING", logger="envelope_mq.producer"):
        publisher.connect()
        for n in range(3):
            publisher.publish(b"lost %d" % n, routing_key="nowhere")  # unlooked
        with pytest.raises(PublishNotConfirmedError, match="3 x matched no queue"):
            publisher.close()
    logged = [r for r in caplog.records if "publish failed" in r.getMessage()]
    assert len(logged) == 1
    assert "routing key 'nowhere'" in logged[0].getMessage()
    assert publisher.stats().failed == 3
