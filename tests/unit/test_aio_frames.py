"""Content-header frames pamqp cannot decode, rewritten into ones it can."""

from __future__ import annotations

import struct

import pamqp.frame
import pamqp.header
import pytest
from envelope_mq.consumer.transport import QUARANTINE_DEFECTS_HEADER
from pamqp.commands import Basic

from envelope_mq.aio.frames import sanitized_frame

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
