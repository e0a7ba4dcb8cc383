"""Content headers written byte by byte that used to kill or stall the consumer.

Each case publishes, with the hand-written client of tests/rawamqp.py, a
message whose content header the broker accepts but pika cannot decode (or
decodes into values it cannot encode again), then a valid message behind it.
The hostile one must end in quarantine as ``malformed`` (or, for the float
version, as ``malformed`` through the strict version check), the valid one
must be handled, and the consumer must still be running.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.peek import peek
from envelope_mq.consumer.replay import replay_quarantine
from envelope_mq.consumer.transport import QUARANTINE_DEFECTS_HEADER
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared import wire
from envelope_mq.shared.amqp import Topology
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from rawamqp import RawAmqpPublisher, basic_properties, field, longstr, shortstr, table
from scenario_kit import (
    FAST_RECONNECT,
    TRACE_HEADER,
    ConsumerThread,
    QuarantineWatcher,
    RawMessage,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.aio import AsyncEncryptedConsumer
from envelope_mq.faststream import EnvelopeMiddleware, guard_connection
from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = [pytest.mark.security]

# How long a case may take; a stalled consumer is what these tests look for.
SETTLE_SECONDS = 60.0


def nested(code: bytes, depth: int) -> bytes:
    value = b"V"
    for _ in range(depth):
        value = code + (table([(b"a", value)]) if code == b"F" else longstr(value))
    return value


# The broker's frame_max (and pika's): a content header frame of 8 bytes of
# framing, 12 of class, weight and body size, then the property list.
FRAME_MAX = 131072
ROOM_LEFT = 40  # bytes a frame could still take: less than the quarantine headers


def filling(fields: dict[str, bytes]) -> dict[str, bytes]:
    """``fields`` with a header added that leaves ROOM_LEFT bytes in the frame."""
    target = FRAME_MAX - 8 - 12 - ROOM_LEFT
    pad = target - len(basic_properties(with_extra(fields, [(b"pad", field(""))])))
    return with_extra(fields, [(b"pad", field("p" * pad))])


# case -> (extra header fields, whether the body stays valid, the quarantine
# reason, what is asserted on the quarantined copy's headers)
Check = Callable[[dict[str, Any]], None]


def no_check(headers: dict[str, Any]) -> None:
    pass


def described(text: str) -> Check:
    def check(headers: dict[str, Any]) -> None:
        assert text in headers[QUARANTINE_DEFECTS_HEADER]

    return check


CASES: dict[str, tuple[list[tuple[bytes, bytes]], bool, str, Check]] = {
    # pika hands the name over as bytes; building the quarantine copy raised
    # TypeError and the consumer died.
    "name-not-utf8": (
        [(b"\xff\xfe-name", field(1))],
        False,
        "malformed",
        described("name is not UTF-8; dropped"),
    ),
    # pika made the double a 301-digit int; re-encoding it raised struct.error.
    "huge-double": (
        [(b"x-huge", b"d" + struct.pack(">d", 1e300))],
        False,
        "malformed",  # a 17-byte body: refused before any KMS call
        described("x-huge']: float written as text"),
    ),
    # pika fails to decode the content header at all: the consumer reconnected
    # forever with the message at the head of the queue.
    "timestamp-past-9999": (
        [(b"x-when", b"T" + struct.pack(">Q", 2**63))],
        True,
        "malformed",
        described("past year 9999; dropped"),
    ),
    "tables-nested-5000-deep": (
        [(b"x-deep", nested(b"F", 5000))],
        True,
        "malformed",
        described("nested deeper than"),
    ),
    "arrays-nested-20000-deep": (
        [(b"x-deep", nested(b"A", 20000))],
        True,
        "malformed",
        described("nested deeper than"),
    ),
    # A copy with the quarantine headers added would not fit in one frame:
    # the broker closed the connection on every try.
    "headers-filling-the-frame": (
        [],  # see filling()
        False,
        "malformed",
        described("the copy would not fit in one frame"),
    ),
}


def raw_fields(message: RawMessage, trace: str) -> dict[str, bytes]:
    headers = [(name.encode(), field(value)) for name, value in message.headers.items()]
    headers.append((TRACE_HEADER.encode(), field(trace)))
    props = message.properties
    fields = {
        "content_type": shortstr(props["content_type"].encode()),
        "headers": table(headers),
        "delivery_mode": b"\x02",
        "message_id": shortstr(props["message_id"].encode()),
        "timestamp": struct.pack(">Q", props["timestamp"]),
    }
    return fields


def with_extra(
    fields: dict[str, bytes], extra: list[tuple[bytes, bytes]]
) -> dict[str, bytes]:
    body = fields["headers"][4:] + b"".join(shortstr(n) + v for n, v in extra)
    return {**fields, "headers": longstr(body)}


def run_case(
    kms: KmsFixture,
    url: str,
    names: AmqpNames,
    hostile: dict[str, bytes],
    hostile_body: bytes,
    *,
    reason: str,
    check: Check,
    flavour: str = "sync",
) -> None:
    ledger = MessageLedger(f"hostile header ({flavour} consumer)")
    topology = scenario_topology(names.queue, names.exchange)
    good_body = payload("good", 0, 64)
    with RawPublisher(kms.settings("producer", [url]), topology) as sealer:
        good = sealer.seal(good_body, "good-0")
    ledger.published("hostile", b"", expect="quarantined")
    ledger.published("good-0", good_body)
    with RawAmqpPublisher(url) as raw:
        raw.publish(
            1, names.exchange, names.queue, basic_properties(hostile), hostile_body
        )
        raw.publish(
            2,
            names.exchange,
            names.queue,
            basic_properties(raw_fields(good, "good-0")),
            good.body,
        )
        verdicts = raw.sync()
    assert sorted(verdicts.acked) == [1, 2], verdicts.refused
    watcher = QuarantineWatcher([url], topology, ledger)
    if flavour == "sync":
        consumer = EncryptedConsumer.from_settings(
            kms.settings("consumer", [url]),
            topology,
            ledger_handler(ledger),
            reconnect_backoff=FAST_RECONNECT,
        )
        with watcher, ConsumerThread(consumer):
            settle(ledger, SETTLE_SECONDS)
        reconnects = consumer.stats.reconnects
    else:
        with watcher:
            reconnects = consume_one_in_a_thread(kms, url, topology, ledger)
            settle(ledger, SETTLE_SECONDS)
    report = ledger.check()
    assert report["handled"] == 1
    assert watcher.reasons == {"hostile": reason}
    check(watcher.headers["hostile"])
    assert reconnects == 0
    assert queue_depth(url, names.queue) == 0


def consume_one_in_a_thread(
    kms: KmsFixture, url: str, topology: Topology, ledger: MessageLedger
) -> int:
    """:func:`consume_one_async` in a thread of its own, so that a consumer
    stuck in its reconnect loop fails the test instead of hanging it."""
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(
            asyncio.run(consume_one_async(kms, url, topology, ledger))
        ),
        daemon=True,
    )
    thread.start()
    thread.join(SETTLE_SECONDS + 30)
    assert results, "the asyncio consumer did not handle the message behind"
    return results[0]


async def consume_one_async(
    kms: KmsFixture, url: str, topology: Topology, ledger: MessageLedger
) -> int:
    """Run the asyncio consumer until it handled one message; its reconnects."""
    consumer = AsyncEncryptedConsumer.from_settings(
        kms.settings("consumer", [url]), topology, reconnect_backoff=FAST_RECONNECT
    )
    async with consumer:
        stats = await asyncio.wait_for(
            consumer.run(ledger_handler(ledger), count=1), SETTLE_SECONDS
        )
    return stats.reconnects


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_content_header_is_quarantined_and_the_queue_flows(
    case: str, emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    run_hostile(case, "sync", emq_kms, emq_rabbitmq_url, emq_amqp_names)


# aiormq/pamqp decode the asyncio consumer's frames; aio/frames.py rewrites the
# content headers they cannot decode.
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_content_header_does_not_stall_the_asyncio_consumer(
    case: str, emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    run_hostile(case, "asyncio", emq_kms, emq_rabbitmq_url, emq_amqp_names)


def run_hostile(
    case: str,
    flavour: str,
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    extra, body_valid, reason, check = CASES[case]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(
        emq_kms.settings("producer", [emq_rabbitmq_url]), topology
    ) as sealer:
        sealed = sealer.seal(payload("hostile", 0, 64), "hostile")
    fields = with_extra(raw_fields(sealed, "hostile"), extra)
    if case == "headers-filling-the-frame":
        fields = filling(fields)
    body = sealed.body if body_valid else b"not a sealed body"
    if flavour == "asyncio" and case != "headers-filling-the-frame":
        # pamqp encodes floats: only what was dropped is described
        check = described("") if reason == "malformed" else no_check
    run_case(
        emq_kms,
        emq_rabbitmq_url,
        emq_amqp_names,
        fields,
        body,
        reason=reason,
        check=check,
        flavour=flavour,
    )


@pytest.mark.parametrize("code", ["f", "d"])
def test_a_float_version_is_not_version_one(
    code: str, emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(
        emq_kms.settings("producer", [emq_rabbitmq_url]), topology
    ) as sealer:
        sealed = sealer.seal(payload("hostile", 0, 64), "hostile")
    fields = raw_fields(sealed, "hostile")
    packed = struct.pack(">f" if code == "f" else ">d", 1.0)
    version = wire.VERSION_HEADER.encode()
    # the same table with the version written as a float
    headers = [
        (
            name.encode(),
            code.encode() + packed if name == wire.VERSION_HEADER else field(value),
        )
        for name, value in sealed.headers.items()
    ]
    headers.append((TRACE_HEADER.encode(), field("hostile")))
    assert any(name == version for name, _ in headers)
    fields["headers"] = table(headers)
    run_case(
        emq_kms,
        emq_rabbitmq_url,
        emq_amqp_names,
        fields,
        sealed.body,
        reason="malformed",
        check=described("x-emq-version']: float written as text"),
    )


INTEGER_ONE = {
    "b": b"\x01",
    "B": b"\x01",
    "s": b"\x00\x01",
    "u": b"\x00\x01",
    "U": b"\x00\x01",
    "i": b"\x00\x00\x00\x01",
    "I": b"\x00\x00\x00\x01",
    "l": b"\x00" * 7 + b"\x01",
    "L": b"\x00" * 7 + b"\x01",
}


# RabbitMQ refuses a table holding "U" (541 INTERNAL_ERROR, it reads "s" as the
# signed short), so no consumer ever receives one; the decoder's unit tests
# cover it. The asyncio consumer reads through pamqp (which reads "l" and "L"
# as int too): a reimplementation's "l" version must open on both.
@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
@pytest.mark.parametrize("code", sorted(set(INTEGER_ONE) - {"U"}))
def test_version_one_is_read_from_every_integer_type_code(
    code: str,
    flavour: str,
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    ledger = MessageLedger("integer version")
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    body = payload("version", 0, 64)
    with RawPublisher(
        emq_kms.settings("producer", [emq_rabbitmq_url]), topology
    ) as sealer:
        sealed = sealer.seal(body, "version-1")
    headers = [
        (
            name.encode(),
            code.encode() + INTEGER_ONE[code]
            if name == wire.VERSION_HEADER
            else field(value),
        )
        for name, value in sealed.headers.items()
    ]
    fields = {**raw_fields(sealed, "version-1"), "headers": table(headers)}
    ledger.published("version-1", body)
    with RawAmqpPublisher(emq_rabbitmq_url) as raw:
        raw.publish(
            1,
            emq_amqp_names.exchange,
            emq_amqp_names.queue,
            basic_properties(fields),
            sealed.body,
        )
        assert raw.sync().acked == [1]
    watcher = QuarantineWatcher([emq_rabbitmq_url], topology, ledger)
    if flavour == "asyncio":
        with watcher:
            consume_one_in_a_thread(emq_kms, emq_rabbitmq_url, topology, ledger)
            settle(ledger, SETTLE_SECONDS)
    else:
        consumer = EncryptedConsumer.from_settings(
            emq_kms.settings("consumer", [emq_rabbitmq_url]),
            topology,
            ledger_handler(ledger),
        )
        with watcher, ConsumerThread(consumer):
            settle(ledger, SETTLE_SECONDS)
    assert ledger.check()["handled"] == 1
    assert watcher.reasons == {}


# What the broker itself refuses (541, the channel closed): these never reach
# any consumer, so a FastStream subscriber cannot be shown them.
BROKER_REFUSES = {
    "unknown-type-code": basic_properties(
        {"headers": table([(b"x-odd", b"Z" + bytes(8))])}
    ),
    # the flags promise a message_id and a timestamp; the list stops short
    "truncated-property-list": struct.pack(">H", 1 << 7 | 1 << 6) + shortstr(b"m"),
}


def test_hostile_content_headers_do_not_stall_a_faststream_subscriber(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    """Every hostile kind, then a valid message, at one guarded FastStream app.

    Unguarded, aiormq's reader fails on the first of them (pamqp cannot
    decode it), the robust connection reconnects, and the message is at the
    head of the queue again: nothing behind it is ever handled.
    """
    url = emq_rabbitmq_url
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    ledger = MessageLedger("hostile headers (FastStream subscriber)")
    with RawPublisher(emq_kms.settings("producer", [url]), topology) as sealer:
        publishes, expected = hostile_publishes(sealer)
        good_body = payload("good", 0, 64)
        good = sealer.seal(good_body, "good-0")
    with RawAmqpPublisher(url) as raw:
        for ident, (_case, properties) in enumerate(BROKER_REFUSES.items(), 1):
            raw.publish(ident, topology.exchange, topology.queue, properties, b"x")
            assert raw.sync().refused, _case
        for ident, (case, fields, body) in enumerate(publishes, 1):
            ledger.published(case, b"", expect="quarantined")
            raw.publish(
                ident, topology.exchange, topology.queue, basic_properties(fields), body
            )
        ledger.published("good-0", good_body)
        raw.publish(
            0,
            topology.exchange,
            topology.queue,
            basic_properties(raw_fields(good, "good-0")),
            good.body,
        )
        verdicts = raw.sync()
    assert not verdicts.refused, verdicts.refused
    envelope = EnvelopeMiddleware.from_settings(emq_kms.settings("consumer", [url]))
    with QuarantineWatcher([url], topology, ledger) as watcher:
        try:
            closes = asyncio.run(
                faststream_until_handled(url, topology, envelope, ledger)
            )
            settle(ledger, SETTLE_SECONDS)
        finally:
            envelope.close()
    report = ledger.check()
    assert report["handled"] == 1
    assert watcher.reasons == expected
    for case in ("name-not-utf8", "timestamp-past-9999", "id-not-utf8"):
        assert watcher.headers[case][QUARANTINE_DEFECTS_HEADER]
    assert (
        "would not fit in one frame"
        in (watcher.headers["headers-filling-the-frame"][QUARANTINE_DEFECTS_HEADER])
    )
    assert closes == [], "the subscriber's connection was lost"
    assert queue_depth(url, topology.queue) == 0


async def faststream_until_handled(
    url: str, topology: Topology, envelope: EnvelopeMiddleware, ledger: MessageLedger
) -> list[str]:
    """A guarded RabbitBroker until its subscriber handled the valid message;
    what closed its connection before the app stopped."""
    closes: list[str] = []
    broker = guard_connection(
        RabbitBroker(
            url,
            middlewares=[envelope],
            on_close=[lambda _conn, exc: closes.append(repr(exc))],
        )
    )
    done = asyncio.Event()

    @broker.subscriber(
        RabbitQueue(
            topology.queue,
            durable=True,
            arguments=topology.queue_declare_arguments(),
            routing_key=topology.binding_key,
        ),
        RabbitExchange(
            topology.exchange,
            type=ExchangeType.TOPIC,
            durable=True,
            auto_delete=topology.exchange_auto_delete,
        ),
    )
    async def handle(body: bytes, message: RabbitMessage) -> None:
        ledger.handled(message.message_id, message.body)
        done.set()

    async with broker:
        await broker.start()
        await asyncio.wait_for(done.wait(), SETTLE_SECONDS)
        seen = list(closes)
    return seen


def hostile_publishes(
    sealer: RawPublisher,
) -> tuple[list[tuple[str, dict[str, bytes], bytes]], dict[str, str]]:
    """Each hostile kind the broker accepts, as (case, property fields, body),
    and the quarantine reason each should get."""
    expected: dict[str, str] = {}
    publishes: list[tuple[str, dict[str, bytes], bytes]] = []
    for case, (extra, body_valid, reason, _check) in sorted(CASES.items()):
        sealed = sealer.seal(payload(case, 0, 64), case)
        fields = with_extra(raw_fields(sealed, case), extra)
        if case == "headers-filling-the-frame":
            fields = filling(fields)
        body = sealed.body if body_valid else b"not a sealed body"
        publishes.append((case, fields, body))
        expected[case] = reason
    # a message_id that is not UTF-8: pamqp fails on the whole header
    sealed = sealer.seal(payload("id-not-utf8", 0, 64), "id-not-utf8")
    fields = raw_fields(sealed, "id-not-utf8")
    fields["message_id"] = shortstr(b"\xff\xfe-id")
    publishes.append(("id-not-utf8", fields, sealed.body))
    expected["id-not-utf8"] = "malformed"
    return publishes, expected


def test_peek_and_replay_read_hostile_messages_in_quarantine(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    """A quarantine queue anyone may publish to: peek and replay, on pika, read
    every hostile kind through our own decoder and neither fail nor stall."""
    url = emq_rabbitmq_url
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    with RawPublisher(emq_kms.settings("producer", [url]), topology) as sealer:
        publishes, _expected = hostile_publishes(sealer)
    with RawAmqpPublisher(url) as raw:
        for ident, (_case, fields, body) in enumerate(publishes, 1):
            raw.publish(
                ident, "", topology.quarantine_queue, basic_properties(fields), body
            )
        verdicts = raw.sync()
    assert not verdicts.refused, verdicts.refused
    seen = peek(url, topology.quarantine_queue, limit=len(publishes) + 1)
    assert len(seen) == len(publishes)
    by_trace = {str(m.headers.get(TRACE_HEADER)): m for m in seen}
    assert sorted(by_trace) == sorted(case for case, _f, _b in publishes)
    for case in ("name-not-utf8", "timestamp-past-9999", "id-not-utf8"):
        assert by_trace[case].defects, case
    assert by_trace["id-not-utf8"].message_id is None
    result = replay_quarantine(url, topology)
    assert result.total_moved == len(publishes)
    assert queue_depth(url, topology.queue) == len(publishes)
    assert queue_depth(url, topology.quarantine_queue) == 0
