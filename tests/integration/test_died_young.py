"""Connections that keep dying young, cut by the fault proxy on the real broker.

The sync consumer and the asyncio one share the policy (consumer/reconnects.py):
the n-th connection in a row lost soon after connecting waits the n-th delay of
the backoff before the reconnect, and says so (INFO reconnect_delayed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings

from envelope_mq.aio import AsyncEncryptedConsumer
from envelope_mq.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

TIMEOUT = 120.0
# No jitter: the n-th pause is exactly the n-th delay.
BACKOFF = Backoff(initial=0.05, factor=2.0, cap=1.0, jitter=0.0)


def _delays(caplog: pytest.LogCaptureFixture) -> list[object]:
    return [
        getattr(r, "delay", None)
        for r in caplog.records
        if getattr(r, "event", None) == "reconnect_delayed"
    ]


def _events(caplog: pytest.LogCaptureFixture) -> list[object]:
    return [getattr(r, "event", None) for r in caplog.records]


def test_a_sync_consumer_whose_connection_keeps_dying_young_waits_longer_each_time(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxied = emq_rabbitmq_proxy.rewrite(emq_consumer_settings.rabbitmq_urls[0])
    consuming = threading.Event()
    consumer = EncryptedConsumer.from_settings(
        dataclasses.replace(emq_consumer_settings, rabbitmq_urls=(proxied,)),
        emq_amqp_topology,
        lambda message: consuming.set(),
        reconnect_backoff=BACKOFF,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name="consumer-under-test")
    with caplog.at_level(logging.INFO, logger="envelope_mq.consumer.worker"):
        thread.start()
        try:
            # A message handled: the first connection is up (a cut while it is
            # being set up would fail the start, not lose a connection).
            with EncryptedPublisher.from_settings(
                emq_producer_settings, topology=emq_amqp_topology
            ) as publisher:
                publisher.send(b"up")
            assert consuming.wait(TIMEOUT)
            # Each connection is cut as soon as it is up: each dies young.
            for count in range(1, 4):
                assert emq_rabbitmq_proxy.reset_all() == 1
                deadline = time.monotonic() + TIMEOUT
                while consumer.stats.reconnects < count:
                    assert thread.is_alive(), errors
                    assert time.monotonic() < deadline, "no reconnect"
                    time.sleep(0.01)
        finally:
            consumer.stop()
            thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert errors == []
    events = _events(caplog)
    assert events.count("broker_lost") == 3
    assert events.count("broker_reconnected") == 3
    assert _delays(caplog) == [0.05, 0.1, 0.2]


def test_an_asyncio_consumer_whose_connection_keeps_dying_young_waits_longer_each_time(
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxied = emq_rabbitmq_proxy.rewrite(emq_consumer_settings.rabbitmq_urls[0])
    consumer = AsyncEncryptedConsumer.from_settings(
        dataclasses.replace(emq_consumer_settings, rabbitmq_urls=(proxied,)),
        emq_amqp_topology,
        reconnect_backoff=BACKOFF,
    )

    async def handler(message: ReceivedMessage) -> None:
        pass

    async def reconnected(count: int) -> None:
        while consumer.stats.reconnects < count:
            await asyncio.sleep(0.01)

    async def run() -> None:
        async with consumer:
            task = asyncio.create_task(consumer.run(handler))
            async with asyncio.timeout(TIMEOUT):
                # Each connection is cut as soon as it is up: each dies young.
                for count in range(1, 4):
                    assert await asyncio.to_thread(emq_rabbitmq_proxy.reset_all) == 1
                    await reconnected(count)
            consumer.stop()
            await task

    with caplog.at_level(logging.INFO, logger="envelope_mq.aio.consumer"):
        asyncio.run(run())
    events = _events(caplog)
    assert events.count("broker_lost") == 3
    assert events.count("broker_reconnected") == 3
    assert _delays(caplog) == [0.05, 0.1, 0.2]
    assert consumer.stats.reconnects == 3
