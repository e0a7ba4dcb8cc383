"""The container group (``pytest -m container``): RabbitMQ in a container, and the
compose stack. The engine is whatever answers the Docker API: Docker, or the podman
socket of ``scripts/containers.sh`` (which ``make test`` runs the suite under).

In this directory the session broker is a RabbitMQ container, so the usual fixtures
(``emq_rabbitmq_url``, ``emq_amqp_names``, ``emq_kms``...) point at it. Without an
engine the group is skipped, and under ``CI=true`` it fails: CI must never pass by
skipping it. Containers are labelled with this process as their owner; the session
removes the leftovers of dead runs at its start and its own at its end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from container_kit import missing
from scenario_kit import ledger_report_hooks

from envelope_mq.testing.broker import Broker
from envelope_mq.testing.containers import (
    RabbitContainer,
    container_engine_unavailable_reason,
    rabbitmq_image,
    reap,
)

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


@pytest.fixture(scope="session")
def emq_rabbitmq_broker(rabbitmq_container: RabbitContainer) -> Broker:
    """This directory's session broker: the container, not the local one."""
    return Broker(urls=(rabbitmq_container.url,), kind="container")


@pytest.fixture
def own_rabbitmq_container(container_engine: None) -> Iterator[RabbitContainer]:
    """A RabbitMQ container of this test's own, free to stop and start."""
    with RabbitContainer(rabbitmq_image(os.environ)) as container:
        yield container
