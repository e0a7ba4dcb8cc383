"""Hypothesis throws 10,000 malformed deliveries at the real consumer.

Each is a properly sealed message damaged in one to three ways: headers of
random AMQP types and sizes or missing, wrong versions and algorithms, strings
that are not UTF-8, huge or non-canonical contexts, truncated, extended,
flipped or random bodies, changed properties. Every one must end in the
quarantine queue with a reason, the consumer must never die, and valid
messages sent in between must keep flowing.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import os
import random
from collections.abc import Callable
from typing import Any

import pika.data
import pytest
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared import wire
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st
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

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = [pytest.mark.security, pytest.mark.slow]

EXAMPLES = 10_000
VALID_EVERY = 100  # a valid message after every 100 malformed ones


class RawStr(str):
    """A str that pika sends as an AMQP longstr of arbitrary (non-UTF-8) bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawStr:
        text = super().__new__(cls, f"<raw {raw!r}>")
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
    st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ),
)
AMQP_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
NOT_UTF8 = st.binary(min_size=1, max_size=40).map(lambda b: b"\xff" + b)
SHORT_TEXT = st.text(max_size=40)  # at most 160 bytes: fits an AMQP shortstr


def prefix_of(text: str) -> Callable[[int], str]:
    """A function giving the first n characters of ``text``."""
    return lambda n: text[:n]


def header_bytes(headers: dict[str, Any]) -> int:
    """The size of ``headers`` as pika encodes them in the header frame."""
    return int(pika.data.encode_table([], headers))


def big_text(size: int, char: str) -> str:
    """About ``size`` bytes of ``char`` in UTF-8."""
    return char * (size // len(char.encode()))


@st.composite
def contexts(draw: st.DrawFn, original: str) -> str:
    """An x-emq-context other than ``original``: garbage, non-canonical, huge."""
    kind = draw(st.sampled_from(["text", "noncanonical", "other", "huge", "types"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    parsed = json.loads(original)
    if kind == "noncanonical":
        return json.dumps(parsed, indent=draw(st.integers(0, 2)), sort_keys=False) + " "
    if kind == "other":
        other = draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10)))
        return json.dumps(other, sort_keys=True, separators=(",", ":"))
    if kind == "huge":
        count = draw(st.integers(200, 2000))
        return json.dumps(
            {f"k{i:05d}": "v" * 20 for i in range(count)},
            sort_keys=True,
            separators=(",", ":"),
        )
    return json.dumps({"tenant": draw(st.integers() | st.none() | st.lists(st.text()))})


@st.composite
def damage(draw: st.DrawFn, base: RawMessage) -> tuple[RawMessage, list[str]]:
    """``base`` damaged in one to three ways, and the names of those ways."""
    message = base.copy()
    headers = message.headers
    kinds = draw(
        st.lists(
            st.sampled_from(
                [
                    "header-type",
                    "header-missing",
                    "header-oversize",
                    "non-utf8",
                    "version",
                    "algorithm",
                    "context",
                    "key-id",
                    "data-key",
                    "body-truncate",
                    "body-extend",
                    "body-flip",
                    "body-random",
                    "property",
                ]
            ),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    name = draw(st.sampled_from(wire.HEADER_NAMES))
    for kind in kinds:
        if kind == "header-type":
            headers[name] = draw(AMQP_VALUES)
        elif kind == "header-missing":
            headers.pop(name, None)
        elif kind == "header-oversize":
            # Over our 4 KiB limit, under the broker's 128 KiB frame_max (a
            # header frame larger than that never reaches any consumer).
            size = draw(st.integers(4_000, 100_000))
            headers[name] = big_text(size, draw(st.sampled_from("aé字😀")))
        elif kind == "non-utf8":
            headers[name] = RawStr(draw(NOT_UTF8))
        elif kind == "version":
            headers[wire.VERSION_HEADER] = draw(
                st.integers(-(2**63), 2**63 - 1)
                | st.sampled_from(["1", True, decimal.Decimal(1), b"\x01", 0, 2])
            )
        elif kind == "algorithm":
            headers[wire.ALG_HEADER] = draw(
                st.sampled_from(
                    [
                        "AES-128-GCM",
                        "aes-256-gcm",
                        "AES-256-GCM ",
                        "AES-256-CBC",
                        "none",
                    ]
                )
                | st.text(max_size=20)
            )
        elif kind == "context":
            headers[wire.CONTEXT_HEADER] = draw(
                contexts(base.headers[wire.CONTEXT_HEADER])
            )
        elif kind == "key-id":
            headers[wire.KEY_ID_HEADER] = draw(
                st.text(min_size=1, max_size=80) | st.uuids().map(str)
            )
        elif kind == "data-key":
            original = str(base.headers[wire.DATA_KEY_HEADER])
            headers[wire.DATA_KEY_HEADER] = draw(
                st.text(min_size=1, max_size=300)
                | st.binary(min_size=1, max_size=200).map(
                    lambda b: base64.b64encode(b).decode()
                )
                | st.integers(1, len(original) - 1).map(prefix_of(original))
            )
        elif kind == "body-truncate" and message.body:
            message.body = message.body[: draw(st.integers(0, len(message.body) - 1))]
        elif kind == "body-extend":
            message.body += draw(st.binary(min_size=1, max_size=64))
        elif kind == "body-flip" and message.body:
            bit = draw(st.integers(0, len(message.body) * 8 - 1))
            flipped = bytearray(message.body)
            flipped[bit // 8] ^= 1 << (bit % 8)
            message.body = bytes(flipped)
        elif kind == "body-random":
            message.body = draw(st.binary(max_size=300))
        elif kind == "property":
            prop = draw(
                st.sampled_from(
                    [
                        "message_id",
                        "timestamp",
                        "content_type",
                        "content_encoding",
                        "type",
                    ]
                )
            )
            message.properties[prop] = draw(
                st.none()
                | (st.integers(0, 2**64 - 1) if prop == "timestamp" else SHORT_TEXT)
            )
    # Damage that the wire would undo (the same value again) proves nothing.
    assume(on_the_wire(message) != on_the_wire(base))
    # A header frame over the broker's 128 KiB frame_max reaches no consumer:
    # the broker closes the channel instead. Stay well under it.
    assume(header_bytes(message.headers) < 110_000)
    return message, kinds


def on_the_wire(message: RawMessage) -> tuple[Any, ...]:
    """What the consumer would receive, for comparing two messages."""
    envelope = {n: (type(v).__name__, repr(v)) for n, v in message.headers.items()}
    return (message.body, sorted(envelope.items()), sorted(message.properties.items()))


# Hypothesis warns when it builds the repr of an example this large; a huge
# header is the point here, not a mistake.
@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
def test_ten_thousand_malformed_deliveries_are_all_quarantined(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    run_seed = int(os.environ.get("EMQ_FUZZ_SEED") or random.randrange(2**32))
    print(f"fuzz seed {run_seed} (set EMQ_FUZZ_SEED to replay)")
    ledger = MessageLedger(f"{EXAMPLES:,} malformed deliveries (hypothesis)")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls), topology, ledger_handler(ledger)
    )
    # Hypothesis publishes before the consumer starts: it watches the global
    # random state during each example, and the consumer's thread (backoff
    # jitter, KMS request nonces) would trip that check from the side.
    with RawPublisher(emq_kms.settings("producer", urls), topology) as publisher:
        bases = [
            publisher.seal(payload("base", i, 64), f"base-{i}", context=context)
            for i, context in enumerate([None, {"tenant": "a"}, {"a": "1", "b": "2"}])
        ]
        good_bodies = {
            f"good-{i:04d}": payload("good", i, 64)
            for i in range(EXAMPLES // VALID_EVERY + 1)
        }
        good = [publisher.seal(body, mid) for mid, body in good_bodies.items()]
        sent = {"bad": 0, "good": 0}

        @seed(run_seed)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.sampled_from(bases).flatmap(damage))
        def publish_malformed(damaged: tuple[RawMessage, list[str]]) -> None:
            message, kinds = damaged
            trace = f"bad-{sent['bad']:05d}"
            sent["bad"] += 1
            for kind in kinds:
                ledger.fault(kind, 1)
            ledger.published(trace, b"", expect="quarantined")
            publisher.send(message, trace)
            if sent["bad"] % VALID_EVERY == 0 and sent["good"] < len(good):
                valid = good[sent["good"]]
                sent["good"] += 1
                good_id = valid.properties["message_id"]
                ledger.published(good_id, good_bodies[good_id])
                publisher.send(valid, good_id)

        publish_malformed()
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        settle(ledger)
    report = ledger.check()
    assert sent["bad"] >= EXAMPLES, f"hypothesis ran only {sent['bad']} examples"
    assert sum(report["quarantined"].values()) == sent["bad"]
    assert report["handled"] == sent["good"]
