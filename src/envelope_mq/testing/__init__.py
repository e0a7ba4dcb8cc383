"""Test support shipped to users (``envelope-mq[testing]``): broker and KMS emulator
fixtures (a pytest plugin), a private rabbitmq-server node and a fault-injecting
TCP proxy (see faultproxy).

The plugin is opt-in: ``pytest -p envelope_mq.testing`` or, in a root conftest.py,
``pytest_plugins = ["envelope_mq.testing"]`` registers this package, and pytest
then loads :mod:`envelope_mq.testing.plugin` through ``pytest_plugins`` below.
Importing this package imports nothing else: the names below load on first use,
so the demo's import of :mod:`envelope_mq.testing.broker` does not pull in pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envelope_mq.testing.broker import (
        PINNED_IMAGE,
        Broker,
        NoBrokerError,
        start_broker,
    )
    from envelope_mq.testing.faultproxy import FaultProxy
    from envelope_mq.testing.kms import KmsFixture, running_emulator
    from envelope_mq.testing.rabbitmq_node import RabbitNode, RabbitNodeError

# Read by pytest when this package is registered as a plugin.
pytest_plugins = ["envelope_mq.testing.plugin"]

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

_HOME = {
    "PINNED_IMAGE": "broker",
    "Broker": "broker",
    "NoBrokerError": "broker",
    "start_broker": "broker",
    "FaultProxy": "faultproxy",
    "KmsFixture": "kms",
    "running_emulator": "kms",
    "RabbitNode": "rabbitmq_node",
    "RabbitNodeError": "rabbitmq_node",
}


def __getattr__(name: str) -> Any:
    """PEP 562: load the module that defines ``name`` on first use."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
