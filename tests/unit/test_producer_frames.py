from __future__ import annotations

from typing import Any

import pika
import pytest
from envelope_mq.producer import frames as producer_frames
from envelope_mq.producer.frames import frame_message, header_payload, method_payload
from envelope_mq.shared.errors import SealingError
from pika import frame, spec

HEADERS: dict[str, Any] = {
    "x-emq-version": 1,
    "x-emq-alg": "AES-256-GCM",
    "x-emq-key-id": "key-Ω",
    "x-emq-data-key": "AAJrMUckWu15KnXK/WBUxLqi4urMqBqUiQ2ZNawtG4GUA==",
    "x-emq-context": '{"tenant":"ä"}',
}


def pika_frames(
    channel: int, body: bytes, body_max: int, properties: pika.BasicProperties
) -> bytes:
    method = spec.Basic.Publish(exchange="ex", routing_key="rk.1", mandatory=True)
    parts = [
        frame.Method(channel, method).marshal(),
        frame.Header(channel, len(body), properties).marshal(),
    ]
    for start in range(0, len(body), body_max):
        parts.append(frame.Body(channel, body[start : start + body_max]).marshal())
    return b"".join(parts)


@pytest.mark.parametrize(
    "optional",
    [
        {},
        {"content_type": "text/plain"},
        {"content_encoding": "gzip", "type": "order.created"},
        {"content_type": "application/json", "content_encoding": "", "type": "t"},
    ],
)
@pytest.mark.parametrize(("size", "body_max"), [(0, 100), (1024, 131064), (250, 100)])
def test_frames_are_byte_identical_to_pikas(
    optional: dict[str, str], size: int, body_max: int
) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    properties = pika.BasicProperties(
        delivery_mode=2,
        message_id="6f1c1d2e-0b7a-4c8e-9a65-1f5b8d3c2e10",
        timestamp=1_700_000_000,
        headers=HEADERS,
        **optional,
    )
    ours = frame_message(
        7,
        method_payload("ex", "rk.1"),
        header_payload(
            len(body),
            HEADERS,
            message_id="6f1c1d2e-0b7a-4c8e-9a65-1f5b8d3c2e10",
            timestamp=1_700_000_000,
            **optional,
        ),
        body,
        body_max,
    )
    assert b"".join(ours) == pika_frames(7, body, body_max, properties)


def test_a_body_over_the_frame_size_is_split_into_several_body_frames() -> None:
    frames = frame_message(1, b"m", b"h", b"x" * 250, 100)
    body_frames = [f for f in frames if f.startswith(b"\x03\x00\x01")]
    assert len(body_frames) == 3


@pytest.mark.parametrize(
    "field", ["message_id", "content_type", "content_encoding", "type"]
)
def test_a_property_over_255_bytes_is_refused(field: str) -> None:
    values: dict[str, Any] = {"message_id": "id", "timestamp": 1, field: "é" * 128}
    with pytest.raises(SealingError, match=field):
        header_payload(1, HEADERS, **values)


def test_an_overlong_routing_key_is_refused() -> None:
    with pytest.raises(SealingError, match="routing key"):
        method_payload("ex", "k" * 256)


V2_HEADERS: dict[str, Any] = {"x-emq": bytes(range(200))}


@pytest.mark.parametrize(
    "cause", [None, "order-41", "ä" * 120, "c" * 255, "6f1c1d2e-0b7a-4c8e"]
)
@pytest.mark.parametrize("headers", [V2_HEADERS, HEADERS])
def test_a_header_with_or_without_a_cause_is_byte_identical_to_pikas(
    headers: dict[str, Any], cause: str | None
) -> None:
    with_cause = dict(headers)
    if cause is not None:
        with_cause["x-emq-cause"] = cause  # last, as the envelope adds it
    properties = pika.BasicProperties(
        delivery_mode=2,
        message_id="m-1",
        timestamp=1_700_000_000,
        headers=with_cause,
        type="t",
    )
    expected = frame.Header(1, 33, properties).marshal()[7:-1]
    # Twice: the first call fills the table cache, the second is served from it.
    for _ in range(2):
        ours = header_payload(
            33, with_cause, message_id="m-1", timestamp=1_700_000_000, type="t"
        )
        assert ours == expected


@pytest.mark.parametrize(
    "headers",
    [
        # Not last, or not a str: pika's encoding of the whole table, cached.
        {"x-emq-cause": "m-0", "x-emq": b"\x01\x02"},
        {"x-emq": b"\x01\x02", "x-emq-cause": b"m-0"},
        {"x-emq-cause": "only"},
        {},
    ],
)
def test_other_header_layouts_still_match_pika(headers: dict[str, Any]) -> None:
    properties = pika.BasicProperties(
        delivery_mode=2, message_id="m-1", timestamp=1, headers=headers
    )
    expected = frame.Header(1, 5, properties).marshal()[7:-1]
    assert header_payload(5, headers, message_id="m-1", timestamp=1) == expected


def test_the_cause_does_not_fill_the_table_cache() -> None:
    producer_frames._tables.clear()
    for n in range(50):
        header_payload(
            1, {**V2_HEADERS, "x-emq-cause": f"m-{n}"}, message_id="m", timestamp=1
        )
    assert len(producer_frames._tables) == 1
