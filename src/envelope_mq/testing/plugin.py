"""pytest plugin: RabbitMQ and KMS emulator fixtures for envelope-mq test suites.

Opt-in: nothing of ours loads into a test run until a suite asks for it, with
``pytest -p envelope_mq.testing`` or ``pytest_plugins = ["envelope_mq.testing"]``
in its root conftest.py (install ``envelope-mq[testing]``). Every fixture name
starts with ``emq_`` so that none shadows a user's own:

- ``emq_rabbitmq_broker`` / ``emq_rabbitmq_url`` / ``emq_rabbitmq_urls`` (session):
  a broker chosen as :mod:`envelope_mq.testing.broker` describes; skipped with the
  reason when there is none, but failed when ``CI=true``;
- ``emq_amqp_names``: unique queue and exchange names, deleted after the test;
- ``emq_amqp_topology``: a :class:`~envelope_mq.shared.amqp.Topology` on those
  names whose queues expire and whose exchange auto-deletes, so nothing piles up
  even after a crash;
- ``emq_rabbitmq_proxy``: a started :class:`~envelope_mq.testing.faultproxy.FaultProxy`
  in front of the broker, to cut (``reset_all()``), hold or refuse connections;
- ``emq_rabbitmq_node``: a private, stoppable ``rabbitmq-server`` node of its own;
- ``emq_kms``: an emulator on a free port, strict signatures, one key with an
  alias, a producer principal (GenerateDataKey only) and a consumer one (Decrypt
  only);
- ``emq_kms_tls``: the same over HTTPS with a CA generated for the run
  (``ca_file``; its ``settings()`` carry it as ``kms_ca_file``);
- ``emq_producer_settings`` / ``emq_consumer_settings``: Settings for each role.

Importing this module imports pytest and the standard library only: the broker,
node, proxy and emulator modules load inside the fixtures that need them, so a
plugin that cannot import (a platform without ``pwd``, a missing extra) never
stops the user's whole run, and a run that uses none of them pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from envelope_mq.shared.amqp import Topology
    from envelope_mq.shared.config import Settings
    from envelope_mq.testing.broker import Broker
    from envelope_mq.testing.faultproxy import FaultProxy
    from envelope_mq.testing.kms import KmsFixture
    from envelope_mq.testing.rabbitmq_node import RabbitNode

__all__ = ["AmqpNames"]

# Test queues vanish 10 minutes after their last use even if teardown never ran.
QUEUE_EXPIRES_MS = 600_000


def _missing(reason: str) -> NoReturn:
    """Skip, or fail when CI=true: a CI run must never pass by skipping."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def emq_rabbitmq_broker() -> Iterator[Broker]:
    """The session's broker (RABBITMQ_URL, local, container or private node)."""
    from envelope_mq.testing.broker import NoBrokerError, start_broker

    try:
        broker = start_broker(os.environ)
    except NoBrokerError as exc:
        _missing(str(exc))
    with broker:
        yield broker


@pytest.fixture(scope="session")
def emq_rabbitmq_urls(emq_rabbitmq_broker: Broker) -> tuple[str, ...]:
    """Every URL of the session broker, in failover order."""
    return emq_rabbitmq_broker.urls


@pytest.fixture(scope="session")
def emq_rabbitmq_url(emq_rabbitmq_broker: Broker) -> str:
    """The session broker's first URL."""
    return emq_rabbitmq_broker.url


@dataclass(frozen=True)
class AmqpNames:
    """Queue and exchange names that belong to one test."""

    queue: str
    exchange: str

    @property
    def quarantine_queue(self) -> str:
        """The quarantine queue's name for :attr:`queue`."""
        from envelope_mq.shared.amqp import QUARANTINE_SUFFIX

        return self.queue + QUARANTINE_SUFFIX


@pytest.fixture
def emq_amqp_names(
    request: pytest.FixtureRequest, emq_rabbitmq_urls: tuple[str, ...]
) -> Iterator[AmqpNames]:
    """Unique names for this test; the queues and exchange are deleted afterwards."""
    from envelope_mq.shared.amqp import connect_blocking
    from envelope_mq.shared.errors import BrokerError

    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    tag = uuid.uuid4().hex[:8]
    names = AmqpNames(queue=f"emq-test-{slug}-{tag}", exchange=f"emq-test-x-{tag}")
    yield names
    # Best effort: x-expires and auto-delete are the safety net.
    with contextlib.suppress(BrokerError):
        connection = connect_blocking(emq_rabbitmq_urls)
        try:
            channel = connection.channel()
            channel.queue_delete(names.queue)
            channel.queue_delete(names.quarantine_queue)
            channel.exchange_delete(names.exchange)
        finally:
            with contextlib.suppress(Exception):
                connection.close()


@pytest.fixture
def emq_amqp_topology(emq_amqp_names: AmqpNames) -> Topology:
    """A self-cleaning classic-queue topology on this test's names."""
    from envelope_mq.shared.amqp import Topology

    return Topology(
        queue=emq_amqp_names.queue,
        exchange=emq_amqp_names.exchange,
        queue_arguments={"x-expires": QUEUE_EXPIRES_MS},
        exchange_auto_delete=True,
    )


@pytest.fixture
def emq_stream_topology(emq_amqp_names: AmqpNames) -> Topology:
    """A stream topology on this test's names (``x-queue-type: stream``).

    A stream cannot expire: it is deleted after the test (emq_amqp_names), and
    its retention (one hour, 100 MB) bounds what a killed test run leaves.
    Its quarantine queue is a classic queue that expires.
    """
    from envelope_mq.shared.amqp import Topology

    return Topology(
        queue=emq_amqp_names.queue,
        exchange=emq_amqp_names.exchange,
        queue_type="stream",
        queue_arguments={"x-max-age": "1h", "x-max-length-bytes": 100_000_000},
        quarantine_arguments={"x-expires": QUEUE_EXPIRES_MS},
        exchange_auto_delete=True,
    )


@pytest.fixture
def emq_rabbitmq_proxy(emq_rabbitmq_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session broker; ``rewrite(url)`` routes to it."""
    from urllib.parse import urlsplit

    from envelope_mq.testing.faultproxy import FaultProxy

    parts = urlsplit(emq_rabbitmq_url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
    with FaultProxy(upstream, name="rabbitmq") as proxy:
        yield proxy


@pytest.fixture
def emq_rabbitmq_node() -> Iterator[RabbitNode]:
    """A private rabbitmq-server node of this test's own, free to stop or kill."""
    from envelope_mq.testing.rabbitmq_node import (
        RabbitNode,
        RabbitNodeError,
        rabbitmq_server_unavailable_reason,
    )

    reason = rabbitmq_server_unavailable_reason()
    if reason is not None:
        _missing(reason)
    node = RabbitNode()
    try:
        node.start()
    except RabbitNodeError as exc:
        node.close()
        _missing(str(exc))
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def emq_kms() -> Iterator[KmsFixture]:
    """A fresh KMS emulator with one key and the producer and consumer principals."""
    from envelope_mq.testing.kms import running_emulator

    with running_emulator() as fixture:
        yield fixture


@pytest.fixture
def emq_kms_tls() -> Iterator[KmsFixture]:
    """Like ``emq_kms``, served over HTTPS; its settings trust the run's own CA."""
    from envelope_mq.testing.kms import running_emulator

    with running_emulator(tls=True) as fixture:
        yield fixture


@pytest.fixture
def emq_producer_settings(
    emq_kms: KmsFixture, emq_rabbitmq_urls: tuple[str, ...]
) -> Settings:
    """Settings of the producer role (may only generate data keys)."""
    return emq_kms.settings("producer", emq_rabbitmq_urls)


@pytest.fixture
def emq_consumer_settings(
    emq_kms: KmsFixture, emq_rabbitmq_urls: tuple[str, ...]
) -> Settings:
    """Settings of the consumer role (may only decrypt data keys)."""
    return emq_kms.settings("consumer", emq_rabbitmq_urls)
