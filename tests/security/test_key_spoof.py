"""A producer holding only key A cannot speak as key B (issue 11, real KMS path).

Producer A publishes with context tenant=b and x-emq-key-id naming key B (the
data key really comes from key A, through the emulator and the official SDK).
A consumer allowing only key B for tenant=b (and key A for tenant=a), with B
given by alias and resolved at start by DescribeKey, quarantines the spoof as
key-mismatch, refuses A's honest attempt at tenant=b as context-denied, and
hands B's own messages over with key_id = B, as KMS reported it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import AliyunKms
from identity_kit import ALIAS_B, ClaimingKms, TwoKeys, two_key_emulator
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.security

PER_KIND = 5


@pytest.fixture
def keys() -> Iterator[TwoKeys]:
    with two_key_emulator() as running:
        yield running


def test_a_producer_with_key_a_cannot_speak_for_tenant_b_as_key_b(
    keys: TwoKeys, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("key spoof: key A claims key B for tenant=b")
    urls = (emq_rabbitmq_url,)
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    tenant_b = {"tenant": "b"}
    producer_a = keys.settings(keys.producer_a, urls)
    with (
        RawPublisher(producer_a, topology, key_id=keys.key_b) as spoofer,
        AliyunKms.from_settings(producer_a) as kms_a,
    ):
        spoofer.cache = DataKeyCache(ClaimingKms(kms_a, keys.key_a, keys.key_b))
        for i in range(PER_KIND):
            mid, body = f"spoof-{i}", payload("spoof", i, 64)
            ledger.published(mid, body, expect="quarantined")
            spoofer.send(spoofer.seal(body, mid, context=tenant_b), mid)
    ledger.fault("x-emq-key-id: key B on a data key of key A", PER_KIND)
    with RawPublisher(producer_a, topology, key_id=keys.key_a) as honest_a:
        for i in range(PER_KIND):
            mid, body = f"a-for-b-{i}", payload("a4b", i, 64)
            ledger.published(mid, body, expect="quarantined")
            honest_a.send(honest_a.seal(body, mid, context=tenant_b), mid)
    ledger.fault("key A, honest header, context tenant=b", PER_KIND)
    producer_b = keys.settings(keys.producer_b, urls)
    # By alias: GenerateDataKey answers with B's KeyId, which the header carries.
    with RawPublisher(producer_b, topology, key_id=ALIAS_B) as real_b:
        for i in range(PER_KIND):
            mid, body = f"b-{i}", payload("b", i, 64)
            ledger.published(mid, body)
            real_b.send(real_b.seal(body, mid, context=tenant_b), mid)

    senders: list[str] = []

    def handler(message: ReceivedMessage) -> None:
        senders.append(message.key_id)
        ledger.handled(message.message_id, message.body)

    consumer = EncryptedConsumer.from_settings(
        keys.settings(keys.consumer, urls),
        topology,
        handler,
        key_policy=KeyPolicy.parse([f"{keys.key_a}@tenant=a", f"{ALIAS_B}@tenant=b"]),
    )
    with QuarantineWatcher(list(urls), topology, ledger), ConsumerThread(consumer):
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == PER_KIND
    assert report["quarantined"] == {
        "context-denied": PER_KIND,
        "key-mismatch": PER_KIND,
    }
    assert set(senders) == {keys.key_b}
