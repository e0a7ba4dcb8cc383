"""Content-header frames pamqp cannot decode, rewritten into ones it can."""

from __future__ import annotations

import asyncio
import itertools
import random
import struct

import pamqp.frame
import pamqp.header
import pytest
from envelope_mq.consumer.transport import QUARANTINE_DEFECTS_HEADER
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import InMemoryKeyProvider
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic

from envelope_mq.aio.broker import outgoing_properties
from envelope_mq.aio.frames import (
    _SanitizingStreamReader,
    plainly_decodable,
    sanitized_frame,
)

FLAG_HEADERS, FLAG_MESSAGE_ID, FLAG_TIMESTAMP = 1 << 13, 1 << 7, 1 << 6


def shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def table(*fields: tuple[bytes, bytes]) -> bytes:
    body = b"".join(shortstr(name) + value for name, value in fields)
    return struct.pack(">I", len(body)) + body


def header_frame(properties: bytes, *, channel: int = 3, body_size: int = 5) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + properties
    return struct.pack(">BHI", 2, channel, len(payload)) + payload + b"\xce"


def nested(depth: int) -> bytes:
    value = b"V"
    for _ in range(depth):
        value = b"F" + table((b"a", value))
    return value


def decoded(frame: bytes) -> tuple[int, Basic.Properties, int]:
    _size, channel, content = pamqp.frame.unmarshal(frame)
    assert isinstance(content, pamqp.header.ContentHeader)
    return channel, content.properties, content.body_size


@pytest.mark.parametrize(
    ("properties", "defect"),
    [
        (
            struct.pack(">H", FLAG_HEADERS | FLAG_MESSAGE_ID)
            + table((b"when", b"T" + struct.pack(">Q", 2**63)), (b"ok", b"t\x01"))
            + shortstr(b"m-1"),
            "past year 9999; dropped",
        ),
        (
            struct.pack(">H", FLAG_HEADERS | FLAG_MESSAGE_ID)
            + table((b"\xff\xfe", b"t\x01"), (b"ok", b"t\x01"))
            + shortstr(b"m-1"),
            "name is not UTF-8; dropped",
        ),
        (
            struct.pack(">H", FLAG_HEADERS | FLAG_MESSAGE_ID)
            + table((b"deep", nested(3000)), (b"ok", b"t\x01"))
            + shortstr(b"m-1"),
            "nested deeper than",
        ),
        (
            struct.pack(">H", FLAG_MESSAGE_ID | FLAG_TIMESTAMP)
            + shortstr(b"m-1")
            + struct.pack(">Q", 2**64 - 1),
            "timestamp: 18446744073709551615 is past year 9999; dropped",
        ),
    ],
)
def test_a_header_pamqp_cannot_decode_is_rewritten_with_its_defects(
    properties: bytes, defect: str
) -> None:
    frame = header_frame(properties)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pamqp raises
        pamqp.frame.unmarshal(frame)
    channel, rewritten, body_size = decoded(sanitized_frame(frame))
    assert (channel, body_size) == (3, 5)
    assert rewritten.message_id == "m-1"
    headers = rewritten.headers or {}
    assert defect in headers[QUARANTINE_DEFECTS_HEADER]
    # what could be decoded is kept (the timestamp case has no headers at all)
    assert headers.get("ok") is (None if defect.startswith("timestamp") else True)


def test_a_header_pamqp_decodes_passes_untouched() -> None:
    frame = header_frame(
        struct.pack(">H", FLAG_HEADERS | FLAG_MESSAGE_ID)
        + table(
            (b"x", b"d" + struct.pack(">d", 1e300)), (b"v", b"l" + bytes(7) + b"\x01")
        )
        + shortstr(b"m-1")
    )
    assert sanitized_frame(frame) is frame


def other_frame(kind: int, payload: bytes, *, channel: int = 3) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def read_through_stream(stream: bytes, cuts: list[int]) -> bytes:
    """``stream`` fed to the sanitizing StreamReader in pieces cut at ``cuts``."""

    async def run() -> bytes:
        reader = _SanitizingStreamReader()
        edges = [0, *sorted(cuts), len(stream)]
        for start, end in itertools.pairwise(edges):
            reader.feed_data(stream[start:end])
        reader.feed_eof()
        return await reader.read()

    return asyncio.run(run())


HOSTILE = header_frame(
    struct.pack(">H", FLAG_HEADERS | FLAG_MESSAGE_ID)
    + table((b"\xff\xfe", b"t\x01"))
    + shortstr(b"m-1")
)
VALID = header_frame(struct.pack(">H", FLAG_MESSAGE_ID) + shortstr(b"m-2"))
STREAM = (
    other_frame(1, b"a method frame")
    + HOSTILE
    + other_frame(3, b"a body " * 300)
    + other_frame(8, b"")
    + VALID
    + other_frame(3, b"body")
)
EXPECTED = STREAM.replace(HOSTILE, sanitized_frame(HOSTILE))


@pytest.mark.parametrize("seed", range(40))
def test_the_stream_reader_rewrites_only_hostile_headers_however_the_bytes_arrive(
    seed: int,
) -> None:
    chooser = random.Random(seed)
    if seed == 0:
        cuts = list(range(1, len(STREAM)))  # a byte at a time
    else:
        cuts = chooser.sample(range(1, len(STREAM)), chooser.randint(1, 30))
    assert EXPECTED != STREAM
    assert read_through_stream(STREAM, cuts) == EXPECTED


def test_the_stream_reader_passes_a_cut_frame_and_a_protocol_header_on() -> None:
    # a frame cut short by the end of the stream reaches aiormq as it came
    assert read_through_stream(VALID[:-3], [5]) == VALID[:-3]
    assert read_through_stream(HOSTILE[:20], []) == HOSTILE[:20]
    # the broker refusing our protocol version: aiormq reads and refuses it
    refusal = b"AMQP\x00\x00\x09\x01" + HOSTILE
    assert read_through_stream(refusal, [2, 9]) == refusal


def test_the_sealed_messages_headers_take_the_quick_path() -> None:
    properties = outgoing_properties(
        Sealer(DataKeyCache(InMemoryKeyProvider(["k"])), "k", {"app": "x"}).seal(
            b"body", MessageMeta("m-1", 1_700_000_000, content_type="text/plain")
        )
    )
    frame = pamqp.frame.marshal(pamqp.header.ContentHeader(0, 4, properties), 1)
    assert plainly_decodable(frame)


# A property list as hostile publishers write them: each flag's field from
# plain or odd bytes, the header table's values of any type code.
SHORTSTR = st.one_of(
    st.text("abc-09", max_size=8).map(str.encode),
    st.text("abc-09", max_size=8).map(str.encode),
    st.text(max_size=8).map(str.encode),
    st.binary(max_size=8),
)
# each AMQP field type's size as the spec has it (or its length prefix)
SIZES = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8}
SIZES |= {"f": 4, "d": 8, "V": 0, "D": 5}
LARGE = [0, 1, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]
VALUE = st.one_of(
    st.sampled_from(sorted(SIZES)).flatmap(
        lambda c: st.binary(min_size=SIZES[c], max_size=SIZES[c]).map(
            lambda raw: c.encode() + raw
        )
    ),
    st.sampled_from(LARGE).map(lambda n: b"T" + struct.pack(">Q", n)),
    st.tuples(st.sampled_from(b"SxAF"), SHORTSTR).map(
        lambda t: bytes([t[0]]) + struct.pack(">I", len(t[1])) + t[1]
    ),
    st.tuples(st.sampled_from(b"tIZSF"), st.binary(max_size=12)).map(
        lambda t: bytes([t[0]]) + t[1]  # wrong sizes, unknown codes
    ),
)
FIELDS = st.lists(st.tuples(SHORTSTR, VALUE), max_size=5)


@st.composite
def property_lists(draw: st.DrawFn) -> bytes:
    bits = draw(st.lists(st.integers(0, 15), max_size=4)) + [13] * draw(
        st.integers(0, 3)
    )
    flags = sum(1 << bit for bit in set(bits))
    parts = [struct.pack(">H", flags)]
    for bit in range(15, 1, -1):
        if not flags >> bit & 1:
            continue
        if bit == 13:
            fields = b"".join(shortstr(n) + v for n, v in draw(FIELDS))
            slack = draw(st.sampled_from([0, 0, 0, 0, 0, -1, 1, 3]))
            parts.append(struct.pack(">I", max(0, len(fields) + slack)) + fields)
        elif bit in (12, 11):
            parts.append(draw(st.binary(min_size=1, max_size=1)))
        elif bit == 6:
            parts.append(struct.pack(">Q", draw(st.sampled_from(LARGE))))
        else:
            parts.append(shortstr(draw(SHORTSTR)))
    if draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.binary(max_size=3)))  # trailing bytes
    return b"".join(parts)


@settings(max_examples=3000, deadline=None)
@given(property_lists())
def test_what_the_quick_walk_accepts_pamqp_decodes(properties: bytes) -> None:
    frame = header_frame(properties)
    if plainly_decodable(frame):
        pamqp.frame.unmarshal(frame)  # raises if the walk was wrong
