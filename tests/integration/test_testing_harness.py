from __future__ import annotations

import pika
import pika.exceptions
import pytest
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import BrokerUnavailableError, KmsRequestError
from envelope_mq.shared.kms import AliyunKms

from envelope_mq.testing.broker import Broker
from envelope_mq.testing.faultproxy import FaultProxy, ResetPeer
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.probe import amqp_answers
from envelope_mq.testing.rabbitmq_node import RabbitNode

pytestmark = pytest.mark.integration


def assert_connects(urls: list[str] | tuple[str, ...]) -> None:
    connection = connect_blocking(urls)
    try:
        assert connection.is_open
    finally:
        connection.close()


def test_the_session_broker_answers_amqp(emq_rabbitmq_broker: Broker) -> None:
    assert emq_rabbitmq_broker.urls
    assert_connects(emq_rabbitmq_broker.urls)


def test_test_topologies_clean_up_after_themselves(emq_amqp_topology: Topology) -> None:
    assert emq_amqp_topology.queue.startswith("emq-test-")
    assert emq_amqp_topology.queue_arguments["x-expires"] > 0
    assert emq_amqp_topology.exchange_auto_delete


def test_a_cut_drops_open_connections_and_new_ones_still_pass(
    emq_rabbitmq_proxy: FaultProxy, emq_rabbitmq_url: str
) -> None:
    url = emq_rabbitmq_proxy.rewrite(emq_rabbitmq_url)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    assert emq_rabbitmq_proxy.reset_all() == 1
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connection.process_data_events(time_limit=5)
    assert_connects([url])


def test_a_refusing_proxy_looks_like_a_broker_that_is_down(
    emq_rabbitmq_proxy: FaultProxy, emq_rabbitmq_url: str
) -> None:
    emq_rabbitmq_proxy.add(ResetPeer())  # accepts, then resets each connection
    with pytest.raises(BrokerUnavailableError):
        connect_blocking(emq_rabbitmq_proxy.rewrite(emq_rabbitmq_url))


def test_each_principal_may_do_only_its_own_job(
    emq_kms: KmsFixture,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
) -> None:
    with (
        AliyunKms.from_settings(emq_producer_settings, max_attempts=1) as producer,
        AliyunKms.from_settings(emq_consumer_settings, max_attempts=1) as consumer,
    ):
        check_roles(emq_kms, producer, consumer)


def check_roles(kms: KmsFixture, producer: AliyunKms, consumer: AliyunKms) -> None:
    data_key = producer.generate_data_key(kms.alias, {"tenant": "a"})
    assert data_key.key_id == kms.key_id
    unwrapped = consumer.decrypt_data_key(data_key.wrapped, {"tenant": "a"})
    assert unwrapped.plaintext == data_key.plaintext
    with pytest.raises(KmsRequestError):
        producer.decrypt_data_key(data_key.wrapped, {"tenant": "a"})
    with pytest.raises(KmsRequestError):
        consumer.generate_data_key(kms.key_id, {})


def test_signatures_are_checked(emq_kms: KmsFixture) -> None:
    with (
        AliyunKms(
            emq_kms.producer.access_key_id,
            "not-the-secret",
            endpoint=emq_kms.endpoint,
            max_attempts=1,
        ) as impostor,
        pytest.raises(KmsRequestError),
    ):
        impostor.generate_data_key(emq_kms.key_id, {})


@pytest.mark.slow
def test_a_private_node_keeps_durable_messages_across_a_restart_and_dies_when_killed(
    emq_rabbitmq_node: RabbitNode,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_node.url))
    channel = connection.channel()
    channel.queue_declare("durable", durable=True)
    channel.basic_publish("", "durable", b"kept", pika.BasicProperties(delivery_mode=2))
    connection.close()
    emq_rabbitmq_node.restart()
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_node.url))
    _, _, body = connection.channel().basic_get("durable", auto_ack=True)
    connection.close()
    assert body == b"kept"
    emq_rabbitmq_node.kill()
    assert not amqp_answers("127.0.0.1", emq_rabbitmq_node.port)
