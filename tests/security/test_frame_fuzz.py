"""Hypothesis writes raw AMQP frames at the real consumer, through the real broker.

Where tests/security/test_fuzz_deliveries.py damages sealed messages and lets
pika encode them, this test writes every ``basic.publish`` itself (method,
content header and body frames, by tests/rawamqp.py; nothing of pika's
encoder), so the content headers hold what pika never writes: every field
type code and range, unknown codes, lying lengths, names and shortstrs that
are not UTF-8, timestamps past year 9999, NaN and huge doubles, tables nested
past any recursion limit, header frames filled to the last byte, bodies cut in
odd frame sizes. Some cases are sealed messages with such headers around an
intact envelope, whose version is written with any integer type code.

Each case is predicted: refused by the broker (sent alone, then checked to be
refused), handled, or quarantined (as ``malformed`` when the content header
has a defect). Afterwards every message the broker took is handled or in
quarantine, the queue is empty, and the consumer, never reconnected, still
handles a valid message.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared import wire
from envelope_mq.shared.content_header import MAX_DEPTH
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from rawamqp import RawAmqpPublisher, basic_properties, field, longstr, shortstr
from scenario_kit import (
    FAST_RECONNECT,
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import Expect, MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = [pytest.mark.security, pytest.mark.slow]

CASES = 10_600  # of which about 2 % the broker refuses: >= 10,000 reach the consumer
ACCEPTED_AT_LEAST = 10_000
SEALED_ONE_IN = 7  # cases that are sealed messages
CHOICE_BYTES = 64  # what hypothesis draws per case: its first decisions
BATCH = 250  # publishes in flight before waiting for the broker's confirms
FRAME_MAX = 131072
PROPERTIES_BUDGET = FRAME_MAX - 8 - 12  # a content-header frame's property list
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z

# (code, struct format, lowest, highest) as RabbitMQ reads them; it refuses "U".
INTEGERS = [
    ("b", ">b", -(2**7), 2**7 - 1),
    ("B", ">B", 0, 2**8 - 1),
    ("s", ">h", -(2**15), 2**15 - 1),
    ("u", ">H", 0, 2**16 - 1),
    ("i", ">I", 0, 2**32 - 1),
    ("I", ">i", -(2**31), 2**31 - 1),
    ("l", ">q", -(2**63), 2**63 - 1),
    ("L", ">q", -(2**63), 2**63 - 1),
]
KNOWN_CODES = set(b"bBsuUiIlLfdDtTSxAFV")
UNKNOWN_CODES = sorted(set(range(256)) - KNOWN_CODES)
SHORTSTR_PROPERTIES = [
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "type",
    "app_id",
    "cluster_id",
]
# what a sealed message may carry besides its bound properties
UNBOUND_PROPERTIES = ["correlation_id", "reply_to", "app_id", "cluster_id"]


@dataclass
class Piece:
    """Encoded bytes, and what the decoder and the broker will make of them."""

    data: bytes = b""
    defect: bool = False  # our decoder drops something: the message is malformed
    refused: bool = False  # RabbitMQ refuses the frame (541/406)
    kinds: set[str] = dataclasses.field(default_factory=set)

    def join(self, other: Piece) -> None:
        self.data += other.data
        self.defect |= other.defect
        self.refused |= other.refused
        self.kinds |= other.kinds


class Choices:
    """The decisions of one case, read from bytes hypothesis drew.

    One small ``st.binary`` draw per case instead of dozens of strategy draws
    keeps ten thousand cases within the CI budget (hypothesis spends about a
    millisecond per example on 64 bytes, seven on 512). Hypothesis picks the
    first decisions; the rest come from a generator seeded with its bytes, so
    an example replays exactly.
    """

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._at = 0
        self._more = random.Random(raw)  # our own: the global state stays still

    def take(self, size: int) -> bytes:
        chunk = self._raw[self._at : self._at + size]
        self._at += size
        return chunk + self._more.randbytes(size - len(chunk))

    def int(self, low: int, high: int) -> int:
        span = high - low
        if span <= 0:
            return low
        raw = int.from_bytes(self.take((span.bit_length() + 7) // 8), "big")
        return low + raw % (span + 1)

    def pick(self, items: Sequence[T]) -> T:
        return items[self.int(0, len(items) - 1)]

    def one_in(self, n: int) -> bool:
        return self.int(0, n - 1) == 0

    def binary(self, max_size: int) -> bytes:
        return self.take(self.int(0, max_size))

    def text(self, max_size: int) -> str:
        return "".join(
            chr(self.int(*self.pick(CODE_POINTS))) for _ in range(self.int(0, max_size))
        )


T = TypeVar("T")
# ASCII (twice as likely), controls, Latin-1, CJK, emoji, Unicode line separators
CODE_POINTS = [
    (0x20, 0x7E),
    (0x20, 0x7E),
    (0x00, 0x1F),
    (0x7F, 0xFF),
    (0x4E00, 0x4FFF),
    (0x1F600, 0x1F64F),
    (0x2028, 0x2029),
]


def draw_value(c: Choices, level: int, *, refusable: bool) -> Piece:
    """One typed field value inside a container at nesting ``level``."""
    kinds = ["int", "int", "float", "decimal", "bool", "timestamp", "longstr"]
    kinds += ["longstr", "void", "array", "table", "deep"]
    if refusable:
        kinds += ["unknown-code", "short-U", "non-finite", "lying-length"]
    kind = c.pick(kinds)
    if kind == "int":
        code, fmt, low, high = c.pick(INTEGERS)
        return Piece(code.encode() + struct.pack(fmt, c.int(low, high)))
    if kind == "float":
        code = c.pick("fd")
        raw = c.take(4 if code == "f" else 8)
        if not math.isfinite(struct.unpack(f">{code}", raw)[0]):
            raw = bytes(len(raw))  # the broker refuses NaN and infinities
        return Piece(code.encode() + raw, kinds={"float"})
    if kind == "non-finite":
        value = c.pick([math.nan, math.inf, -math.inf])
        return Piece(b"d" + struct.pack(">d", value), refused=True, kinds={kind})
    if kind == "decimal":
        scale, digits = c.int(0, 255), c.int(-(2**31), 2**31 - 1)
        return Piece(b"D" + struct.pack(">Bi", scale, digits))
    if kind == "bool":
        return Piece(b"t" + c.take(1))
    if kind == "timestamp":
        late = c.one_in(2)
        value = c.int(LAST_SECOND + 1, 2**64 - 1) if late else c.int(0, LAST_SECOND)
        return Piece(
            b"T" + struct.pack(">Q", value),
            defect=late,
            kinds={"timestamp past 9999"} if late else set(),
        )
    if kind == "longstr":
        code = c.pick([b"S", b"x"])
        raw = c.binary(40) if c.one_in(2) else c.text(20).encode()
        return Piece(code + longstr(raw))
    if kind == "void":
        return Piece(b"V")
    if kind == "unknown-code":
        code = c.pick(UNKNOWN_CODES)
        return Piece(bytes([code]) + c.binary(8), refused=True, kinds={kind})
    if kind == "short-U":
        return Piece(b"U" + c.take(2), refused=True, kinds={kind})
    if kind == "lying-length":
        raw = c.binary(20)
        lie = len(raw) + c.pick([-2, -1, 1, 3, 1000])
        return Piece(
            b"S" + struct.pack(">I", max(0, lie)) + raw,
            refused=True,
            kinds={kind},
        )
    if kind == "deep":
        code = c.pick([b"F", b"A"])
        depth = c.int(500, 3000) if c.one_in(20) else c.int(1, 60)
        value = b"V"
        for _ in range(depth):
            value = code + (
                longstr(shortstr(b"a") + value) if code == b"F" else longstr(value)
            )
        # the outermost container sits at ``level``, the innermost level + depth - 1
        deep = level + depth - 1 >= MAX_DEPTH
        return Piece(
            value, defect=deep, kinds={"nesting past the limit"} if deep else set()
        )
    if level >= 4:
        return Piece(b"V")
    if kind == "array":
        items = Piece()
        for _ in range(c.int(0, 3)):
            items.join(draw_value(c, level + 1, refusable=refusable))
        items.data = b"A" + longstr(items.data)
        return items
    inner = draw_table(c, level + 1, refusable=refusable)
    inner.data = b"F" + inner.data
    return inner


def draw_name(c: Choices, *, avoid: frozenset[str] = frozenset()) -> Piece:
    if c.one_in(20):
        raw = b"\xff" + c.binary(10)
        return Piece(shortstr(raw), defect=True, kinds={"name not UTF-8"})
    name = c.text(12)
    if name in avoid or name.startswith("x-emq-"):
        name = "_" + name
    return Piece(shortstr(name.encode()))


def draw_table(
    c: Choices, level: int, *, refusable: bool, avoid: frozenset[str] = frozenset()
) -> Piece:
    """A field table (with its length) at nesting ``level`` (the headers are 1)."""
    body = Piece()
    for _ in range(c.int(0, 5 if level == 1 else 3)):
        body.join(draw_name(c, avoid=avoid))
        body.join(draw_value(c, level, refusable=refusable))
    body.data = longstr(body.data)
    return body


def draw_shortstr(c: Choices) -> Piece:
    if c.one_in(10):
        raw = b"\xfe" + c.binary(20)
        return Piece(shortstr(raw), defect=True, kinds={"shortstr not UTF-8"})
    text = c.text(30).encode()[:255].decode("utf-8", "ignore")
    return Piece(shortstr(text.encode()))


@dataclass
class Case:
    """One publish: its property list and body, and what must become of it."""

    properties: bytes
    body: bytes
    refused: bool
    expect: Expect  # "handled" or "quarantined"
    malformed: bool  # quarantined with reason "malformed"
    kinds: set[str]
    body_frame: int | None


def garbage_case(c: Choices, trace: str, user: bytes) -> Case:
    """Random properties around a body that is no sealed message."""
    fields: dict[str, bytes] = {}
    piece = Piece()
    for name in SHORTSTR_PROPERTIES:
        if c.one_in(2):
            value = draw_shortstr(c)
            fields[name] = value.data
            piece.join(value)
    if not c.one_in(4):
        # About one case in fifty holds something the broker refuses.
        headers = draw_table(c, 1, refusable=c.one_in(15))
        fields["headers"] = headers.data
        piece.join(headers)
    if c.one_in(2):
        fields["delivery_mode"] = bytes([c.pick([1, 2])])
    if c.one_in(2):
        fields["priority"] = c.take(1)
    if c.one_in(2):
        fields["timestamp"] = c.take(8)
    if c.one_in(10):
        fields["user_id"] = shortstr(user)  # the broker checks it is the publisher's
    extra_flags = 2 if c.one_in(10) else 0
    properties = basic_properties(fields, extra_flags=extra_flags)
    if not piece.refused and c.one_in(100):
        # fill the header frame to its last bytes: no room for our quarantine headers
        piece.kinds.add("header frame full")
        room = c.int(0, 200)
        base = dict(fields)
        headers = base.get("headers", struct.pack(">I", 0))
        pad_entry = shortstr(b"pad") + b"S" + struct.pack(">I", 0)
        size = len(
            basic_properties(
                {**base, "headers": headers + pad_entry}, extra_flags=extra_flags
            )
        )
        fill = PROPERTIES_BUDGET - room - size
        table_body = headers[4:] + shortstr(b"pad") + b"S" + longstr(b"p" * fill)
        fields["headers"] = struct.pack(">I", len(table_body)) + table_body
        properties = basic_properties(fields, extra_flags=extra_flags)
        assert len(properties) == PROPERTIES_BUDGET - room
    body = trace.encode() + b":" + c.binary(200)
    return Case(
        properties,
        body,
        piece.refused,
        "quarantined",
        piece.defect and not piece.refused,
        piece.kinds | {"garbage properties"},
        c.pick([None, None, 1, 5, 64]),
    )


def sealed_case(c: Choices, sealer: RawPublisher, trace: str) -> tuple[Case, bytes]:
    """A sealed message with hand-written headers: version in any integer code."""
    plaintext = payload("sealed", int(trace.split("-")[1]), 48)
    sealed = sealer.seal(plaintext, trace)
    piece = Piece(kinds={"sealed"})
    entries = b""
    malformed = False
    for name, value in sealed.headers.items():
        if name == wire.VERSION_HEADER:
            choice = c.pick([*INTEGERS, *INTEGERS, "f", "d"])
            if isinstance(choice, tuple):
                code, fmt, _, _ = choice
                encoded = code.encode() + struct.pack(fmt, 1)
            else:
                encoded = choice.encode() + struct.pack(f">{choice}", 1.0)
                malformed = True
                piece.kinds.add("float version")
        else:
            encoded = field(value)
        entries += shortstr(name.encode()) + encoded
    envelope_names = frozenset(sealed.headers) | {"x-delivery-count"}
    extra = draw_table(c, 1, refusable=False, avoid=envelope_names)
    piece.join(Piece(defect=extra.defect, kinds=extra.kinds))
    entries += extra.data[4:]
    props = sealed.properties
    fields = {
        "content_type": shortstr(props["content_type"].encode()),
        "headers": longstr(entries),
        "delivery_mode": b"\x02",
        "message_id": shortstr(props["message_id"].encode()),
        "timestamp": struct.pack(">Q", props["timestamp"]),
    }
    for name in UNBOUND_PROPERTIES:
        if c.one_in(4):
            value = draw_shortstr(c)
            fields[name] = value.data
            piece.join(value)
    malformed |= piece.defect
    case = Case(
        basic_properties(fields),
        sealed.body,
        False,
        "quarantined" if malformed else "handled",
        malformed,
        piece.kinds,
        c.pick([None, None, 1, 7, 100]),
    )
    return case, plaintext


@dataclass
class Run:
    """The bookkeeping of one fuzz run."""

    ledger: MessageLedger
    publisher: RawAmqpPublisher
    exchange: str
    routing_key: str
    sent: int = 0
    in_flight: dict[int, tuple[str, Case, bytes]] = dataclasses.field(
        default_factory=dict
    )
    traces_by_body: dict[bytes, str] = dataclasses.field(default_factory=dict)
    malformed: set[str] = dataclasses.field(default_factory=set)
    accepted: int = 0
    refused: int = 0
    refused_unexpectedly: list[str] = dataclasses.field(default_factory=list)

    def publish(self, trace: str, case: Case, plaintext: bytes) -> None:
        if case.refused:
            self.sync()  # alone in flight: a refusal closes the channel or connection
        self.sent += 1
        self.in_flight[self.sent] = (trace, case, plaintext)
        self.publisher.publish(
            self.sent,
            self.exchange,
            self.routing_key,
            case.properties,
            case.body,
            body_frame=case.body_frame,
        )
        if case.refused or len(self.in_flight) >= BATCH:
            self.sync()

    def sync(self) -> None:
        verdicts = self.publisher.sync()
        for ident in verdicts.acked:
            trace, case, plaintext = self.in_flight.pop(ident)
            self.accepted += 1
            for kind in case.kinds:
                self.ledger.fault(kind)
            # A frame predicted to be refused that the broker took is just
            # garbage: it must be quarantined like any other.
            self.ledger.published(trace, plaintext, expect=case.expect)
            self.traces_by_body[case.body] = trace
            if case.malformed:
                self.malformed.add(trace)
        for ident, reply in verdicts.refused:
            trace, case, _ = self.in_flight.pop(ident)
            self.refused += 1
            if not case.refused:
                self.refused_unexpectedly.append(
                    f"{trace} {sorted(case.kinds)}: {reply}"
                )
        assert not self.in_flight

    def identify(self, body: bytes) -> str | None:
        return self.traces_by_body.get(body)


def test_ten_thousand_raw_frames_never_stop_or_stall_the_consumer(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    run_seed = int(os.environ.get("EMQ_FUZZ_SEED") or random.randrange(2**32))
    print(f"frame fuzz seed {run_seed} (set EMQ_FUZZ_SEED to replay)")
    ledger = MessageLedger(f"{ACCEPTED_AT_LEAST:,}+ raw AMQP frames (hypothesis)")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    sealer = RawPublisher(emq_kms.settings("producer", urls), topology)
    sealer.close()  # it declared the topology; it only seals from here on
    raw = RawAmqpPublisher(emq_rabbitmq_url)
    run = Run(ledger, raw, topology.exchange, topology.binding_key)
    counter = {"n": 0}
    # Hypothesis publishes before the consumer starts (it watches the global
    # random state, which the consumer's thread would touch from the side).
    with raw:

        @seed(run_seed)
        @settings(
            max_examples=CASES,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.binary(min_size=CHOICE_BYTES, max_size=2 * CHOICE_BYTES))
        def publish_one(raw_choices: bytes) -> None:
            counter["n"] += 1
            n = counter["n"]
            c = Choices(raw_choices)
            if c.one_in(SEALED_ONE_IN):
                case, plaintext = sealed_case(c, sealer, f"sealed-{n:05d}")
                run.publish(f"sealed-{n:05d}", case, plaintext)
            else:
                run.publish(
                    f"fuzz-{n:05d}", garbage_case(c, f"fuzz-{n:05d}", raw.user), b""
                )

        publish_one()
        run.sync()
    assert not run.refused_unexpectedly, run.refused_unexpectedly[:5]
    assert run.accepted >= ACCEPTED_AT_LEAST, (run.accepted, run.refused)
    ledger.fault("refused by the broker (not delivered)", run.refused)

    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        reconnect_backoff=FAST_RECONNECT,
    )
    watcher = QuarantineWatcher(urls, topology, ledger, identify=run.identify)
    with watcher, ConsumerThread(consumer):
        settle(ledger)
        # still alive: a valid message after all of that is handled
        with RawPublisher(emq_kms.settings("producer", urls), topology) as last:
            body = payload("last", 0, 64)
            ledger.published("last-0", body)
            last.send(last.seal(body, "last-0"), "last-0")
        settle(ledger)
    report = ledger.check()
    assert consumer.stats.reconnects == 0
    assert queue_depth(emq_rabbitmq_url, topology.queue) == 0
    wrong = {
        t: watcher.reasons.get(t)
        for t in run.malformed
        if watcher.reasons.get(t) != "malformed"
    }
    assert not wrong, list(wrong.items())[:5]
    assert sum(report["quarantined"].values()) + report["handled"] == run.accepted + 1
