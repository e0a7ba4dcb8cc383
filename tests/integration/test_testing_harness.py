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


def test_the_session_broker_answers_amqp(rabbitmq_broker: Broker) -> None:
    assert rabbitmq_broker.urls
    assert_connects(rabbitmq_broker.urls)


def test_test_topologies_clean_up_after_themselves(amqp_topology: Topology) -> None:
    assert amqp_topology.queue.startswith("emq-test-")
    assert amqp_topology.queue_arguments["x-expires"] > 0
    assert amqp_topology.exchange_auto_delete


def test_a_cut_drops_open_connections_and_new_ones_still_pass(
    rabbitmq_proxy: FaultProxy, rabbitmq_url: str
) -> None:
    url = rabbitmq_proxy.rewrite(rabbitmq_url)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    assert rabbitmq_proxy.reset_all() == 1
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connection.process_data_events(time_limit=5)
    assert_connects([url])


def test_a_refusing_proxy_looks_like_a_broker_that_is_down(
    rabbitmq_proxy: FaultProxy, rabbitmq_url: str
) -> None:
    rabbitmq_proxy.add(ResetPeer())  # accepts, then resets each connection
    with pytest.raises(BrokerUnavailableError):
        connect_blocking(rabbitmq_proxy.rewrite(rabbitmq_url))


def test_each_principal_may_do_only_its_own_job(
    kms: KmsFixture, producer_settings: Settings, consumer_settings: Settings
) -> None:
    with (
        AliyunKms.from_settings(producer_settings, max_attempts=1) as producer,
        AliyunKms.from_settings(consumer_settings, max_attempts=1) as consumer,
    ):
        check_roles(kms, producer, consumer)


def check_roles(kms: KmsFixture, producer: AliyunKms, consumer: AliyunKms) -> None:
    data_key = producer.generate_data_key(kms.alias, {"tenant": "a"})
    assert data_key.key_id == kms.key_id
    assert consumer.decrypt_data_key(data_key.wrapped, {"tenant": "a"}) == (
        data_key.plaintext
    )
    with pytest.raises(KmsRequestError):
        producer.decrypt_data_key(data_key.wrapped, {"tenant": "a"})
    with pytest.raises(KmsRequestError):
        consumer.generate_data_key(kms.key_id, {})


def test_signatures_are_checked(kms: KmsFixture) -> None:
    with (
        AliyunKms(
            kms.producer.access_key_id,
            "not-the-secret",
            endpoint=kms.endpoint,
            max_attempts=1,
        ) as impostor,
        pytest.raises(KmsRequestError),
    ):
        impostor.generate_data_key(kms.key_id, {})


@pytest.mark.slow
def test_a_private_node_keeps_durable_messages_across_a_restart_and_dies_when_killed(
    rabbitmq_node: RabbitNode,
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    channel = connection.channel()
    channel.queue_declare("durable", durable=True)
    channel.basic_publish("", "durable", b"kept", pika.BasicProperties(delivery_mode=2))
    connection.close()
    rabbitmq_node.restart()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    _, _, body = connection.channel().basic_get("durable", auto_ack=True)
    connection.close()
    assert body == b"kept"
    rabbitmq_node.kill()
    assert not amqp_answers("127.0.0.1", rabbitmq_node.port)
