"""EncryptedConsumer: what it holds is released, and a broken set-up is retried."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pika
import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.transport import BlockingTransport
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import ConnectionOptions, Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import BrokerError, BrokerUnavailableError
from procfs import sockets_to

from envelope_mq.testing.faultproxy import FaultProxy, ResetPeer
from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


def publish(settings: Settings, topology: Topology, *bodies: bytes) -> None:
    with EncryptedPublisher.from_settings(settings, topology=topology) as pub:
        for body in bodies:
            pub.send(body)


def test_a_consumer_built_from_settings_releases_its_kms_client_when_run_ends(
    emq_kms: KmsFixture,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    kms_port = int(emq_kms.emulator.port)
    publish(emq_producer_settings, emq_amqp_topology, b"one")
    during: list[int] = []

    def handler(message: ReceivedMessage) -> None:
        during.append(sockets_to(kms_port))

    consumer = EncryptedConsumer.from_settings(
        emq_consumer_settings, emq_amqp_topology, handler
    )
    consumer.run(count=1)
    assert during[0] >= 1  # the SDK keeps its connection pooled while in use
    assert sockets_to(kms_port) == 0
    # The client is released, not spent: a second run unwraps again.
    publish(emq_producer_settings, emq_amqp_topology, b"two")
    consumer.run(count=1)
    assert len(during) == 2


def test_every_reset_during_set_up_comes_out_as_broker_unavailable(
    emq_rabbitmq_url: str, emq_amqp_topology: Topology, emq_rabbitmq_proxy: FaultProxy
) -> None:
    # A real reset, no fault injected: the proxy resets each connection as it
    # accepts it. How pika fails depends on timing; a few percent of the time
    # it raises ValueError out of its I/O loop. Each way must come out as the
    # BrokerUnavailableError the consumer's reconnect loop retries on.
    emq_rabbitmq_proxy.add(ResetPeer())
    transport = BlockingTransport(
        emq_rabbitmq_proxy.rewrite(emq_rabbitmq_url),
        emq_amqp_topology,
        options=ConnectionOptions(connection_attempts=1, socket_timeout=5.0),
    )
    causes: Counter[str] = Counter()
    while not causes["ValueError"] and causes.total() < 5000:
        with pytest.raises(BrokerUnavailableError) as caught:
            transport.open()
        causes[type(caught.value.__cause__).__name__] += 1
    assert causes["ValueError"] == 1, causes


class ResetDuringSetUp:
    """Fault injection: the ``failing``-th BlockingConnection raises, as pika
    does (ValueError from getpeername) when a connection is reset while being
    set up; the others connect for real."""

    def __init__(self, real: Callable[..., Any], failing: int) -> None:
        self._real = real
        self._failing = failing
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self._failing:
            raise ValueError(
                "Expected connected socket, but getpeername() failed: "
                "error=OSError(107, 'Transport endpoint is not connected')"
            )
        return self._real(*args, **kwargs)


def test_a_connection_reset_during_set_up_is_retried_like_a_lost_one(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faults = ResetDuringSetUp(pika.BlockingConnection, failing=2)
    monkeypatch.setattr(pika, "BlockingConnection", faults)
    first_handled = threading.Event()
    bodies: list[bytes] = []

    def handler(message: ReceivedMessage) -> None:
        bodies.append(message.body)
        first_handled.set()
        if message.body == b"after the cut":
            consumer.stop()

    proxied = emq_rabbitmq_proxy.rewrite(emq_consumer_settings.rabbitmq_urls[0])
    consumer = EncryptedConsumer.from_settings(
        replace(emq_consumer_settings, rabbitmq_urls=(proxied,)),
        emq_amqp_topology,
        handler,
        reconnect_backoff=Backoff(initial=0.05, cap=0.2),
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name="consumer-under-test")
    thread.start()
    try:
        publish(emq_producer_settings, emq_amqp_topology, b"before the cut")
        assert first_handled.wait(TIMEOUT)
        emq_rabbitmq_proxy.reset_all()  # the reconnect's first set-up then breaks
        publish(emq_producer_settings, emq_amqp_topology, b"after the cut")
    finally:
        thread.join(TIMEOUT)
        consumer.stop()
    assert not thread.is_alive()
    assert errors == []
    # "before" may come twice: its ack can be lost in the cut (at-least-once).
    assert set(bodies) == {b"before the cut", b"after the cut"}
    assert bodies[-1] == b"after the cut"
    assert faults.calls == 3
    assert consumer.stats.reconnects == 1


def test_both_sides_connect_explicitly_and_stay_connected_until_closed(
    emq_kms: KmsFixture,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
) -> None:
    kms_port = int(emq_kms.emulator.port)
    bodies: list[bytes] = []
    publisher = EncryptedPublisher.from_settings(
        emq_producer_settings, emq_amqp_topology
    )
    consumer = EncryptedConsumer.from_settings(
        emq_consumer_settings,
        emq_amqp_topology,
        lambda message: bodies.append(message.body),
    )
    with publisher, consumer:
        publisher.send(b"one")
        publisher.send(b"two")
        consumer.run(count=1)
        # Still connected between runs: the KMS client is kept, and the second
        # run takes the next message from the same connection.
        assert sockets_to(kms_port) >= 1
        consumer.run(count=1)
    assert bodies == [b"one", b"two"]
    assert sockets_to(kms_port) == 0  # close() released the KMS client
    with pytest.raises(BrokerError, match="closed"):
        publisher.publish(b"after close")
