"""Test support shipped to users: broker and KMS emulator fixtures (a pytest plugin),
a private rabbitmq-server node and a fault-injecting TCP proxy (see faultproxy)."""

from __future__ import annotations

from envelope_mq.testing.broker import PINNED_IMAGE, Broker, NoBrokerError, start_broker
from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture, running_emulator
from envelope_mq.testing.rabbitmq_node import RabbitNode, RabbitNodeError

__all__ = [
    "PINNED_IMAGE",
    "Broker",
    "FaultProxy",
    "KmsFixture",
    "NoBrokerError",
    "RabbitNode",
    "RabbitNodeError",
    "running_emulator",
    "start_broker",
]
