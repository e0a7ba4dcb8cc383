"""The tamper matrix: every way of changing a sealed message is rejected, 100 %.

Through the real broker to the real consumer: each bit of a body flipped, the
envelope headers swapped between two messages, each bound AMQP property
changed, a wrapped key made under another master key or another context
substituted, the version or algorithm downgraded. The untouched originals are
delivered in the same run, so the matrix cannot pass by rejecting everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared import wire
from envelope_mq.shared.config import Settings
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawMessage,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import Credentials, emulator_seed
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.security

TENANT_A = {"tenant": "a"}
TENANT_B = {"tenant": "b"}


@dataclass(frozen=True)
class TwoKeys:
    """An emulator with two master keys both roles may use."""

    endpoint: str
    first: str
    second: str
    producer: Credentials
    consumer: Credentials

    def settings(self, creds: Credentials, urls: list[str], key_id: str) -> Settings:
        return Settings(
            rabbitmq_urls=tuple(urls),
            kms_endpoint=self.endpoint,
            kms_key_id=key_id,
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
        )


@pytest.fixture
def two_keys() -> Iterator[TwoKeys]:
    from envelope_mq.kms_emulator import Emulator

    tag = uuid.uuid4().hex[:8]
    producer = Credentials(f"tamper-producer-{tag}", uuid.uuid4().hex)
    consumer = Credentials(f"tamper-consumer-{tag}", uuid.uuid4().hex)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    seed = emulator_seed(first, f"alias/tamper-{tag}", producer, consumer)
    seed["keys"].append(
        {"key_id": second, "key_spec": "Aliyun_AES_256", "state": "Enabled"}
    )
    for principal in seed["principals"]:
        principal["keys"] = ["*"]
    with Emulator(seed=seed, auth="strict", admin=True, port=0) as emulator:
        yield TwoKeys(emulator.endpoint, first, second, producer, consumer)


def flip(body: bytes, bit: int) -> bytes:
    changed = bytearray(body)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def test_every_tampered_message_is_rejected(
    two_keys: TwoKeys, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("tamper matrix")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    cases: list[tuple[str, str, RawMessage]] = []  # (kind, trace, message)
    expected: dict[str, set[str]] = {}  # kind -> acceptable quarantine reasons

    def case(kind: str, message: RawMessage, *reasons: str) -> None:
        cases.append((kind, f"{kind}-{len(cases):04d}", message))
        expected.setdefault(kind, set()).update(reasons)

    producer = two_keys.settings(two_keys.producer, urls, two_keys.first)
    other = two_keys.settings(two_keys.producer, urls, two_keys.second)
    # One data key per message, so that two messages never share one.
    with (
        RawPublisher(producer, topology, max_messages=1) as publisher,
        RawPublisher(other, topology, max_messages=1) as other_publisher,
    ):
        bodies = {f"orig-{i}": payload("orig", i, 16) for i in range(3)}
        originals = {
            message_id: publisher.seal(body, message_id, context=TENANT_A)
            for message_id, body in bodies.items()
        }
        a, b = originals["orig-0"], originals["orig-1"]

        for bit in range(len(a.body) * 8):
            tampered = a.copy()
            tampered.body = flip(a.body, bit)
            case("body bit flipped", tampered, "undecryptable")

        swapped = a.copy()
        swapped.headers = dict(b.headers)
        case("envelope headers swapped", swapped, "undecryptable")
        swapped = b.copy()
        swapped.headers = dict(a.headers)
        case("envelope headers swapped", swapped, "undecryptable")

        changes = {
            "message_id": "orig-0-replayed",
            "timestamp": a.properties["timestamp"] + 1,
            "content_type": "application/json",
            "content_encoding": "gzip",
            "type": "order.created",
        }
        for prop, value in changes.items():
            tampered = a.copy()
            tampered.properties[prop] = value
            case(f"property {prop} changed", tampered, "undecryptable")
        removed = a.copy()
        removed.properties["content_type"] = None
        case("property content_type changed", removed, "undecryptable")

        foreign = other_publisher.seal(b"x", "foreign", context=TENANT_A)
        tampered = a.copy()
        tampered.headers[wire.DATA_KEY_HEADER] = foreign.headers[wire.DATA_KEY_HEADER]
        case("wrapped key of another master key", tampered, "undecryptable")
        tampered = tampered.copy()
        tampered.headers[wire.KEY_ID_HEADER] = two_keys.second
        case("wrapped key of another master key", tampered, "undecryptable")

        other_context = publisher.seal(b"x", "other-context", context=TENANT_B)
        tampered = a.copy()
        tampered.headers[wire.DATA_KEY_HEADER] = other_context.headers[
            wire.DATA_KEY_HEADER
        ]
        # KMS refuses to unwrap under the wrong context: kms-rejected.
        case("wrapped key of another context", tampered, "kms-rejected")
        tampered = a.copy()
        tampered.headers[wire.CONTEXT_HEADER] = wire.canonical_context(TENANT_B)
        case("context header changed", tampered, "kms-rejected")

        for version in (0, 2):
            tampered = a.copy()
            tampered.headers[wire.VERSION_HEADER] = version
            case("version downgraded or unknown", tampered, "malformed")
        for algorithm in ("AES-128-GCM", "AES-256-CBC", "none", ""):
            tampered = a.copy()
            tampered.headers[wire.ALG_HEADER] = algorithm
            case("algorithm downgraded", tampered, "malformed")

        for kind, trace, message in cases:
            ledger.published(trace, b"", expect="quarantined")
            ledger.fault(kind, 1)
            publisher.send(message, trace)
        for message_id, message in originals.items():
            ledger.published(message_id, bodies[message_id])
            publisher.send(message, message_id)

    consumer = EncryptedConsumer.from_settings(
        two_keys.settings(two_keys.consumer, urls, two_keys.first),
        topology,
        ledger_handler(ledger),
    )
    with (
        QuarantineWatcher(urls, topology, ledger) as watcher,
        ConsumerThread(consumer),
    ):
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == len(originals)
    assert sum(report["quarantined"].values()) == len(cases)  # 100 % rejected
    wrong_reason = [
        (kind, trace, watcher.reasons.get(trace))
        for kind, trace, _ in cases
        if watcher.reasons.get(trace) not in expected[kind]
    ]
    assert wrong_reason == []
