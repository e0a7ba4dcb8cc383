"""The container group (``pytest -m container``): RabbitMQ in a container, and the
compose stack. The engine is whatever answers the Docker API: Docker, or the podman
socket of ``scripts/containers.sh`` (which ``make test`` runs the suite under).

The tests take the broker from ``rabbitmq_container`` (never by overriding the
plugin's session broker fixtures: a session fixture of the plugin that depended on an
override here would cache the container for the rest of the suite). Without an
engine the group is skipped, and under ``CI=true`` it fails: CI must never pass by
skipping it. Containers are labelled with this process as their owner; the session
removes the leftovers of dead runs at its start and its own at its end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from container_kit import missing
from scenario_kit import ledger_report_hooks

from envelope_mq.testing.containers import (
    RabbitContainer,
    container_engine_unavailable_reason,
    rabbitmq_image,
    reap,
)
from envelope_mq.testing.plugin import AmqpNames

pytest_runtest_logreport, pytest_terminal_summary = ledger_report_hooks("container")


@pytest.fixture(scope="session")
def container_engine() -> Iterator[None]:
    """An engine that answers; dead runs' containers reaped first, ours at the end."""
    reason = container_engine_unavailable_reason()
    if reason is not None:
        missing(reason)
    reap()
    try:
        yield
    finally:
        reap(including_mine=True)


@pytest.fixture(scope="session")
def rabbitmq_container(container_engine: None) -> Iterator[RabbitContainer]:
    """A RabbitMQ container shared by the group's tests (never stopped by them)."""
    with RabbitContainer(rabbitmq_image(os.environ)) as container:
        yield container


@pytest.fixture
def container_names() -> AmqpNames:
    """Unique queue and exchange names for one test on the session container (which
    goes with its queues at the end; the scenario topologies also expire)."""
    tag = uuid.uuid4().hex[:8]
    return AmqpNames(queue=f"emq-ctr-{tag}", exchange=f"emq-ctr-x-{tag}")


@pytest.fixture
def own_rabbitmq_container(container_engine: None) -> Iterator[RabbitContainer]:
    """A RabbitMQ container of this test's own, free to stop and start."""
    with RabbitContainer(rabbitmq_image(os.environ)) as container:
        yield container
