"""The stage's outlet (consumer/outlet.py) on each of its paths, real broker.

Pipelined, it publishes through the asynchronous channel under a
``BlockingChannel`` (pika's private ``_impl``), with the stage's framer also
through the connection's private output hook; on the public path (what a pika
without that channel gets, reached here with ``pipelined=False``) each publish
waits for its confirm on pika's public ``BlockingChannel``. Every path must
settle each message as the broker says (confirmed, nacked, returned) and put
the same messages in the queue.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace

import pika
import pytest
from envelope_mq.consumer import outlet as outlet_module
from envelope_mq.consumer.outlet import NACKED, UNROUTABLE, Framer, Outlet
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms

from envelope_mq.stage import _frame

pytestmark = pytest.mark.integration

FRAMERS: dict[str, Framer | None] = {"framed": _frame, "pipelined": None}


@pytest.mark.parametrize("path", ["framed", "pipelined", "public"])
def test_each_publish_settles_as_the_broker_says_on_every_path(
    path: str,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh once-only record (module state, not the component's behaviour).
    monkeypatch.setattr(outlet_module, "_warned", set())
    caplog.set_level(logging.WARNING, "envelope_mq.consumer.outlet")
    # Room for three: the broker nacks the fourth (reject-publish).
    topology = replace(
        emq_amqp_topology,
        queue_arguments={
            **emq_amqp_topology.queue_arguments,
            "x-max-length": 3,
            "x-overflow": "reject-publish",
        },
    )
    key_id = emq_producer_settings.kms_key_id
    assert key_id is not None
    with AliyunKms.from_settings(emq_producer_settings) as kms:
        sealer = Sealer(DataKeyCache(kms), key_id)
        sealed = [
            sealer.seal(b"output %d" % i, MessageMeta(str(uuid.uuid4()), 1_700_000_000))
            for i in range(5)
        ]
    connection = connect_blocking(emq_producer_settings.rabbitmq_urls)
    try:
        topology.declare(connection.channel())
        outlet = Outlet(connection, FRAMERS.get(path), pipelined=path != "public")
        assert outlet.pipelined is (path != "public")
        settled: dict[int, str | None] = {}
        keys = [topology.binding_key] * 4 + ["nowhere"]
        for index, (key, message) in enumerate(zip(keys, sealed, strict=True)):
            outlet.publish(
                topology.exchange,
                key,
                message,
                lambda error, index=index: settled.__setitem__(index, error),
            )
        outlet.flush()
        deadline = time.monotonic() + 30
        while len(settled) < len(sealed) and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        assert settled == {0: None, 1: None, 2: None, 3: NACKED, 4: UNROUTABLE}
        assert len(outlet) == 0
        channel = connection.channel()
        assert (
            channel.queue_declare(topology.queue, passive=True).method.message_count
            == 3
        )
        method, properties, body = channel.basic_get(topology.queue, auto_ack=True)
    finally:
        connection.close()
    assert method is not None
    assert properties.message_id == sealed[0].meta.message_id
    with AliyunKms.from_settings(emq_consumer_settings) as kms:
        opener = Opener(UnwrapCache(kms))
        opened = opener.open(body, opener.parse(properties.headers), sealed[0].meta)
    assert opened.plaintext == b"output 0"
    told = [
        r.getMessage()
        for r in caplog.records
        if r.__dict__.get("event") == "outlet_fallback"
    ]
    if path == "public":
        assert len(told) == 1
        assert pika.__version__ in told[0]
        assert "waits for its confirm" in told[0]
    else:
        assert told == []
