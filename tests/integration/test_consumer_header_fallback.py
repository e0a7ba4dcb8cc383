"""The consumer on pika's own content-header decoding: the fallback taken when
pika's private frame reader is not what consumer/header_frames.py overrides.

Reached through the transport's ``decode_headers`` flag, the same branch a
pika without the hook takes; the broker, the KMS emulator and the SDK are real.
"""

from __future__ import annotations

import logging
import time

import pika
import pytest
from envelope_mq.consumer import header_frames
from envelope_mq.consumer.header_frames import SafeHeaderConnection, connection_class
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.transport import BlockingTransport
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire_v2
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.content_header import ContentProperties
from envelope_mq.shared.envelope import MessageMeta, Opener
from envelope_mq.shared.keycache import UnwrapCache
from envelope_mq.shared.kms import AliyunKms

pytestmark = pytest.mark.integration


def receive(transport: BlockingTransport) -> Delivery:
    transport.open()
    try:
        deadline = time.monotonic() + 30
        while not transport.pending and time.monotonic() < deadline:
            transport.pump(0.2)
        assert transport.pending, "no delivery"
        delivery = transport.pending.popleft()
        transport.ack(delivery)
        transport.flush_acks()
        return delivery
    finally:
        transport.close()


@pytest.mark.parametrize("decode_headers", [True, False])
def test_a_valid_sealed_message_opens_on_either_decoder(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    decode_headers: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh once-only record (module state, not the component's behaviour).
    monkeypatch.setattr(header_frames, "_warned", set())
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology
    ) as pub:
        message_id = pub.send(b"still opens", content_type="text/plain", type="t")
    caplog.set_level(logging.WARNING, "envelope_mq.consumer.header_frames")
    delivery = receive(
        BlockingTransport(
            emq_consumer_settings.rabbitmq_urls,
            emq_amqp_topology,
            decode_headers=decode_headers,
        )
    )
    # Which decoder read the content header: ours, or pika's as the fallback.
    decoder = ContentProperties if decode_headers else pika.BasicProperties
    assert type(delivery.raw) is decoder
    assert delivery.defects == ()
    assert delivery.message_id == message_id
    assert set(delivery.headers) == {wire_v2.HEADER}
    meta = MessageMeta(
        message_id,
        delivery.timestamp or 0,
        delivery.content_type,
        delivery.content_encoding,
        delivery.type,
    )
    with AliyunKms.from_settings(emq_consumer_settings) as kms:
        opener = Opener(UnwrapCache(kms))
        opened = opener.open(delivery.body, opener.parse(delivery.headers), meta)
    assert opened.plaintext == b"still opens"
    told = [
        r.getMessage()
        for r in caplog.records
        if r.__dict__.get("event") == "header_decoder_fallback"
    ]
    if not decode_headers:
        assert connection_class(False) is pika.SelectConnection
        assert len(told) == 1
        assert pika.__version__ in told[0]
        assert "not defended" in told[0]
    else:
        assert connection_class() is SafeHeaderConnection
        assert not told
