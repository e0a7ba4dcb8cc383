"""Metric values after a known run match the ledger, count for count.

Real broker, real emulator, real SDK: a publisher and a consumer with metrics
of their own (as two services would have), good messages, an unroutable one,
a tampered and a malformed one, and one the handler always rejects.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pika
import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.transport import QUARANTINE_REASON_HEADER
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.errors import MessageUnroutableError, PublishNotConfirmedError
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import AliyunKms
from envelope_mq.shared.observability import HealthState, Metrics

from envelope_mq.testing.ledger import MessageLedger

pytestmark = pytest.mark.integration

GOOD = 300
MAX_DELIVERIES = 3
TIMEOUT = 90.0


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def publish_raw(
    url: str,
    topology: Topology,
    body: bytes,
    headers: dict[str, object],
    meta: MessageMeta,
) -> None:
    connection = connect_blocking(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            topology.exchange,
            topology.binding_key,
            body,
            pika.BasicProperties(
                message_id=meta.message_id,
                timestamp=meta.timestamp,
                headers=headers,
                delivery_mode=2,
            ),
        )
    finally:
        connection.close()


def drain_quarantine(url: str, topology: Topology, ledger: MessageLedger) -> int:
    connection = connect_blocking(url)
    moved = 0
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(
                topology.quarantine_queue, auto_ack=True
            )
            if method is None:
                return moved
            headers = properties.headers or {}
            ledger.quarantined(
                properties.message_id, str(headers.get(QUARANTINE_REASON_HEADER))
            )
            moved += 1
    finally:
        connection.close()


def test_metric_values_match_the_ledger(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
) -> None:
    ledger = MessageLedger("observability counts")
    pub_metrics = Metrics(health=HealthState())
    con_metrics = Metrics(health=HealthState())

    # -- publish: good messages, one the handler refuses, one nobody routes ---
    refused_id = str(uuid.uuid4())
    with EncryptedPublisher.from_settings(
        emq_producer_settings, topology=emq_amqp_topology, metrics=pub_metrics
    ) as publisher:
        futures = []
        for n in range(GOOD):
            body = f"message {n} ".encode() * 8
            mid = str(uuid.uuid4())
            ledger.published(mid, body)
            futures.append(publisher.publish(body, message_id=mid))
        ledger.published(refused_id, b"the handler hates this", expect="quarantined")
        futures.append(
            publisher.publish(b"the handler hates this", message_id=refused_id)
        )
        unroutable = publisher.publish(
            b"to nowhere", routing_key=f"nowhere-{uuid.uuid4().hex}"
        )
        with pytest.raises(PublishNotConfirmedError, match="1 x matched no queue"):
            publisher.flush()
        assert all(f.exception() is None for f in futures)
        assert isinstance(unroutable.exception(), MessageUnroutableError)

    # -- published around the library: tampered and malformed ----------------
    key_id = emq_producer_settings.kms_key_id
    assert key_id is not None
    sealer = Sealer(
        DataKeyCache(AliyunKms.from_settings(emq_producer_settings)), key_id
    )
    tampered_id, malformed_id = str(uuid.uuid4()), str(uuid.uuid4())
    meta = MessageMeta(tampered_id, int(time.time()))
    sealed = sealer.seal(b"tamper with me, please", meta)
    flipped = sealed.body[:-1] + bytes([sealed.body[-1] ^ 1])
    ledger.published(tampered_id, b"tamper with me, please", expect="quarantined")
    publish_raw(
        emq_rabbitmq_url, emq_amqp_topology, flipped, dict(sealed.headers), meta
    )
    ledger.published(malformed_id, b"no envelope", expect="quarantined")
    publish_raw(
        emq_rabbitmq_url,
        emq_amqp_topology,
        b"no envelope",
        {},
        MessageMeta(malformed_id, 1),
    )

    # -- consume everything ---------------------------------------------------
    def handler(message: ReceivedMessage) -> None:
        if message.message_id == refused_id:
            raise RuntimeError("refused on purpose")
        ledger.handled(message.message_id, message.body)

    consumer = EncryptedConsumer.from_settings(
        emq_consumer_settings,
        emq_amqp_topology,
        handler,
        max_deliveries=MAX_DELIVERIES,
        reconnect_backoff=Backoff(initial=0.1, cap=0.5),
        metrics=con_metrics,
    )
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    try:
        assert ledger.wait_settled(TIMEOUT, at_least=GOOD)
        quarantine = emq_amqp_topology.quarantine_queue
        wait_for(
            lambda: queue_depth(emq_rabbitmq_url, quarantine) == 3,
            "three quarantined messages",
        )
    finally:
        consumer.stop()
        runner.join(TIMEOUT)
    assert not runner.is_alive()
    assert drain_quarantine(emq_rabbitmq_url, emq_amqp_topology, ledger) == 3
    report = ledger.check()
    assert report["quarantined"] == {
        "handler-error": 1,
        "malformed": 1,
        "undecryptable": 1,
    }

    # -- the publisher's metrics ---------------------------------------------
    pub = {
        kind: sample(pub_metrics, f"envelope_mq_messages_{kind}_total")
        for kind in (
            "published",
            "confirmed",
            "returned",
            "nacked",
            "republished",
            "publish_failed",
        )
    }
    assert pub == {
        "published": GOOD + 2,
        "confirmed": GOOD + 1,
        "returned": 1,
        "nacked": 0,
        "republished": 0,
        "publish_failed": 0,
    }
    requests = "envelope_mq_kms_requests_total"
    assert sample(pub_metrics, requests, operation="GenerateDataKey", outcome="ok") == 1
    assert (
        sample(pub_metrics, "envelope_mq_key_cache_misses_total", cache="data_key") == 1
    )
    assert (
        sample(pub_metrics, "envelope_mq_key_cache_hits_total", cache="data_key")
        == GOOD + 1
    )
    # every 16th seal is timed, the first one included
    assert sample(pub_metrics, "envelope_mq_seal_duration_seconds_count") == (
        (GOOD + 2 + 15) // 16
    )

    # -- the consumer's metrics ----------------------------------------------
    handled = sample(con_metrics, "envelope_mq_messages_handled_total")
    requeued = sample(con_metrics, "envelope_mq_messages_requeued_total")
    consumed = sample(con_metrics, "envelope_mq_messages_consumed_total")
    quarantined = {
        reason: sample(
            con_metrics, "envelope_mq_messages_quarantined_total", reason=reason
        )
        for reason in report["quarantined"]
    }
    assert handled == report["handled"] + report["duplicates"] == GOOD
    assert quarantined == report["quarantined"]
    assert requeued == MAX_DELIVERIES - 1
    # every delivery ended one way or another
    assert consumed == handled + requeued + sum(quarantined.values())
    # two data keys (the publisher's, and the sealer's of the tampered one)
    assert sample(con_metrics, requests, operation="Decrypt", outcome="ok") == 2
    assert (
        sample(con_metrics, "envelope_mq_key_cache_misses_total", cache="unwrap") == 2
    )
    assert (
        sample(con_metrics, "envelope_mq_reconnects_total", component="consumer") == 0
    )
