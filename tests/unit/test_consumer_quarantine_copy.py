"""The quarantine copy of a delivery: always encodable, always one frame."""

from __future__ import annotations

import struct

import pika
from envelope_mq.consumer.header_frames import header_frame_budget
from envelope_mq.consumer.outcome import Outcome, Reason, Verdict
from envelope_mq.consumer.transport import (
    QUARANTINE_DEFECTS_HEADER,
    QUARANTINE_QUEUE_HEADER,
    QUARANTINE_REASON_HEADER,
    quarantine_properties,
)
from envelope_mq.shared.content_header import (
    ContentProperties,
    decode_basic_properties,
)

MALFORMED = Outcome(Verdict.QUARANTINE, Reason.MALFORMED)
BUDGET = header_frame_budget(131072)


def encoded(properties: pika.BasicProperties) -> bytes:
    return b"".join(properties.encode())


def test_floats_are_written_as_text_and_said_so() -> None:
    original = ContentProperties(
        message_id="m-1",
        headers={"x-f": 1e300, "x-list": [float("nan")], "x-int": 5},
    )
    copy = quarantine_properties(original, MALFORMED, "q", 0.0)
    encoded(copy)  # pika can encode it
    assert copy.headers["x-f"] == "1e+300"
    assert copy.headers["x-list"] == ["nan"]
    assert copy.headers["x-int"] == 5
    assert copy.headers[QUARANTINE_DEFECTS_HEADER] == (
        "headers['x-f']: float written as text; "
        "headers['x-list'][0]: float written as text"
    )


def test_the_decoders_defects_come_first_in_the_description() -> None:
    payload = (
        struct.pack(">H", 1 << 13) + struct.pack(">I", 9) + b"\x01kT" + b"\xff" * 6
    )
    original = decode_basic_properties(payload + b"\xff\xff")
    assert original.defects
    copy = quarantine_properties(original, MALFORMED, "q", 0.0)
    assert copy.headers[QUARANTINE_DEFECTS_HEADER].startswith(original.defects[0])
    assert copy.headers[QUARANTINE_REASON_HEADER] == "malformed"
    assert copy.headers[QUARANTINE_QUEUE_HEADER] == "q"


def test_the_description_is_bounded() -> None:
    defects = tuple(f"headers[{i}]: " + "x" * 200 for i in range(500))
    copy = quarantine_properties(
        ContentProperties(defects=defects), MALFORMED, "q", 0.0
    )
    text = copy.headers[QUARANTINE_DEFECTS_HEADER]
    assert len(text) <= 1000
    assert text.endswith("...")


def test_a_copy_that_would_not_fit_in_one_frame_drops_the_original_headers() -> None:
    headers = {f"pad-{i}": "p" * 1000 for i in range(100)}
    headers["pad-last"] = ""
    size = len(encoded(pika.BasicProperties(message_id="m-1", headers=headers)))
    headers["pad-last"] = "p" * (BUDGET - 40 - size)  # 40 bytes left in the frame
    original = ContentProperties(message_id="m-1", headers=headers)
    copy = quarantine_properties(original, MALFORMED, "q", 0.0, budget=BUDGET)
    assert len(encoded(copy)) <= BUDGET
    assert not any(name.startswith("pad-") for name in copy.headers)
    assert copy.message_id == "m-1"
    assert copy.headers[QUARANTINE_DEFECTS_HEADER] == (
        f"headers: all {len(headers)} dropped, the copy would not fit in one frame"
    )


def test_a_copy_that_fits_keeps_every_header() -> None:
    original = ContentProperties(message_id="m-1", headers={"a": "b"})
    copy = quarantine_properties(original, MALFORMED, "q", 0.0)
    assert copy.headers["a"] == "b"
    assert QUARANTINE_DEFECTS_HEADER not in copy.headers
