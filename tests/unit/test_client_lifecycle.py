"""Both clients: building one does no I/O; connecting is explicit."""

from __future__ import annotations

import pytest
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import Opener
from envelope_mq.shared.errors import BrokerError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider

# Nothing listens here: any connection attempt would fail the test.
NOWHERE = "amqp://guest:guest@127.0.0.1:1/%2F"
TOPOLOGY = Topology(queue="q")


def test_a_publisher_is_built_without_connecting_and_refuses_to_publish_before() -> (
    None
):
    provider = InMemoryKeyProvider()
    publisher = EncryptedPublisher(
        NOWHERE, DataKeyCache(provider), "key", topology=TOPOLOGY
    )
    with pytest.raises(BrokerError, match=r"not connected: call connect\(\)"):
        publisher.publish(b"too early")
    publisher.close()  # no I/O, no error
    with pytest.raises(BrokerError, match="closed"):
        publisher.publish(b"too late")
    with pytest.raises(BrokerError, match="closed"):
        publisher.connect()


def test_a_consumer_is_built_and_closed_without_connecting() -> None:
    provider = InMemoryKeyProvider()
    consumer = EncryptedConsumer(
        NOWHERE, TOPOLOGY, Opener(UnwrapCache(provider)), lambda message: None
    )
    consumer.close()
    consumer.close()  # idempotent
