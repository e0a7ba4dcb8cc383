"""Both of the publisher's write paths against the real broker.

The frame path writes pre-built frames through pika's private output hook; the
public path (``TransportOptions(write_frames=False)``, and what a pika without
the hook gets) goes through ``Channel.basic_publish``. Each must give the same
messages on the wire and the same confirm, return and re-publication behaviour.
``scripts/pika-range.sh`` runs this file on the oldest and newest pika the
dependency range allows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from broker_kit import drain
from envelope_mq.producer import EncryptedPublisher, TransportOptions
from envelope_mq.shared import wire_v2
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Opener
from envelope_mq.shared.errors import MessageUnroutableError
from envelope_mq.shared.keycache import UnwrapCache
from envelope_mq.shared.kms import AliyunKms

from envelope_mq.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

PATHS = {True: "pre-built frames", False: "public Channel.basic_publish"}


@pytest.fixture(params=[True, False], ids=["frames", "public"])
def write_frames(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@contextmanager
def publisher(
    settings: Settings, topology: Topology, write_frames: bool, **options: Any
) -> Iterator[EncryptedPublisher]:
    with (
        AliyunKms.from_settings(settings, max_attempts=1, read_timeout=2.0) as kms,
        EncryptedPublisher.from_settings(
            settings,
            topology=topology,
            provider=kms,
            options=TransportOptions(write_frames=write_frames, **options),
        ) as pub,
    ):
        yield pub


def test_the_chosen_path_is_logged_once(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    write_frames: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="envelope_mq.producer"),
        publisher(emq_producer_settings, emq_amqp_topology, write_frames) as pub,
    ):
        pub.send(b"which path")
    told = [
        r.getMessage()
        for r in caplog.records
        if r.__dict__.get("event") == "publish_path"
    ]
    assert len(told) == 1
    assert PATHS[write_frames] in told[0]


def test_messages_land_sealed_and_open(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    write_frames: bool,
) -> None:
    plaintexts = [b"small", bytes(range(256)) * 4096]  # 1 MiB: eight body frames
    with publisher(emq_producer_settings, emq_amqp_topology, write_frames) as pub:
        ids = [
            pub.send(p, context={"tenant": "a"}, content_type="text/plain", type="t")
            for p in plaintexts
        ]
    received = drain(emq_consumer_settings.rabbitmq_urls, emq_amqp_topology.queue)
    assert [properties.message_id for properties, _ in received] == ids
    with AliyunKms.from_settings(emq_consumer_settings) as kms:
        opener = Opener(UnwrapCache(kms))
        for (properties, body), plaintext in zip(received, plaintexts, strict=True):
            assert set(properties.headers) == {wire_v2.HEADER}
            assert properties.delivery_mode == 2
            assert (properties.content_type, properties.type) == ("text/plain", "t")
            meta = MessageMeta(
                properties.message_id,
                properties.timestamp,
                properties.content_type,
                properties.content_encoding,
                properties.type,
            )
            opened = opener.open(body, opener.parse(properties.headers), meta)
            assert opened.plaintext == plaintext


def test_an_unroutable_message_fails_and_the_rest_are_confirmed(
    emq_producer_settings: Settings, emq_amqp_topology: Topology, write_frames: bool
) -> None:
    with publisher(emq_producer_settings, emq_amqp_topology, write_frames) as pub:
        before = [pub.publish(b"m%d" % n) for n in range(2000)]
        lost = pub.publish(b"nowhere to go", routing_key="no.such.binding")
        after = [pub.publish(b"m%d" % n) for n in range(2000)]
        with pytest.raises(MessageUnroutableError):
            lost.result(timeout=60)
        assert pub.flush(timeout=60)
        stats = pub.stats()
    assert all(f.exception() is None for f in before + after)
    assert (stats.published, stats.confirmed, stats.failed) == (4001, 4000, 1)
    stored = drain(emq_producer_settings.rabbitmq_urls, emq_amqp_topology.queue)
    assert [p.message_id for p, _ in stored] == [f.result() for f in before + after]


def test_every_message_is_confirmed_across_a_connection_cut(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    write_frames: bool,
) -> None:
    urls = emq_producer_settings.rabbitmq_urls
    settings = replace(
        emq_producer_settings, rabbitmq_urls=(emq_rabbitmq_proxy.rewrite(urls[0]),)
    )
    futures: list[Future[str]] = []
    with publisher(
        settings, emq_amqp_topology, write_frames, initial_backoff=0.05
    ) as pub:
        for n in range(3000):
            futures.append(pub.publish(b"stream %d" % n))
            if n == 1000:
                emq_rabbitmq_proxy.reset_all()
        assert pub.flush(timeout=60)
        reconnects = pub.stats().reconnects
    assert reconnects >= 1
    assert all(f.exception() is None for f in futures)
    stored = {
        properties.message_id for properties, _ in drain(urls, emq_amqp_topology.queue)
    }
    assert stored == {f.result() for f in futures}
