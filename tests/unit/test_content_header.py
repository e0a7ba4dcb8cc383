from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import pika
import pika.spec
import pytest
from envelope_mq.shared.content_header import (
    INTEGER_CODES,
    MAX_DEPTH,
    ContentProperties,
    decode_basic_properties,
    decode_table,
)
from hypothesis import given, settings
from hypothesis import strategies as st

FIELDS = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
HEADERS_ONLY = struct.pack(">H", 1 << 13)


def shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def table(*fields: tuple[bytes, bytes]) -> bytes:
    body = b"".join(shortstr(name) + value for name, value in fields)
    return struct.pack(">I", len(body)) + body


def with_headers(*fields: tuple[bytes, bytes]) -> bytes:
    return HEADERS_ONLY + table(*fields)


def typed(value: Any) -> Any:
    """``value`` with the type of every part, so that 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int", int(value))  # pika's own int subclass for 'l' is an int
    return (type(value).__name__, value)


def pika_decode(payload: bytes) -> pika.spec.BasicProperties:
    return pika.spec.BasicProperties().decode(payload)


def as_pika(props: ContentProperties) -> pika.spec.BasicProperties:
    return pika.spec.BasicProperties(**{name: getattr(props, name) for name in FIELDS})


# -- valid input: the same as pika, byte for byte ----------------------------

SHORTSTR = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)
NAMES = st.text(min_size=0, max_size=20).filter(lambda s: len(s.encode()) <= 255)
SCALARS = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
    st.decimals(min_value=-(2**31 - 1), max_value=2**31 - 1, places=0, allow_nan=False),
    st.integers(-(2**31 - 1), 2**31 - 1).flatmap(
        lambda raw: st.integers(0, 9).map(
            lambda places: decimal.Decimal(raw).scaleb(-places)
        )
    ),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
    ).map(lambda d: d.replace(microsecond=0)),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4)
    ),
    max_leaves=12,
)
PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "content_type": SHORTSTR,
        "content_encoding": SHORTSTR,
        "headers": st.dictionaries(NAMES, VALUES, max_size=8),
        "delivery_mode": st.integers(0, 255),
        "priority": st.integers(0, 255),
        "correlation_id": SHORTSTR,
        "reply_to": SHORTSTR,
        "expiration": SHORTSTR,
        "message_id": SHORTSTR,
        "timestamp": st.integers(0, 2**64 - 1),
        "type": SHORTSTR,
        "user_id": SHORTSTR,
        "app_id": SHORTSTR,
        "cluster_id": SHORTSTR,
    },
)


@settings(max_examples=300)
@given(PROPERTIES)
def test_valid_properties_decode_as_pika_decodes_them(fields: dict[str, Any]) -> None:
    encoded = b"".join(pika.spec.BasicProperties(**fields).encode())
    ours = decode_basic_properties(encoded)
    theirs = pika_decode(encoded)
    assert ours.defects == ()
    for name in FIELDS:
        assert typed(getattr(ours, name)) == typed(getattr(theirs, name)), name
    # and back through pika's encoder: the very same bytes
    assert b"".join(as_pika(ours).encode()) == encoded


def test_every_integer_type_code_decodes_to_int() -> None:
    one = {
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
    assert set(one) == INTEGER_CODES
    for code, raw in one.items():
        headers = decode_basic_properties(with_headers((b"v", code.encode() + raw)))
        assert typed(headers.headers) == ("dict", [("v", ("int", 1))]), code


@pytest.mark.parametrize(
    ("code", "raw", "expected"),
    [
        ("b", b"\xff", -1),
        ("B", b"\xff", 255),
        ("s", b"\xff\xff", -1),
        ("u", b"\xff\xff", 65535),
        ("U", b"\xff\xff", -1),
        ("i", b"\xff\xff\xff\xff", 2**32 - 1),
        ("I", b"\xff\xff\xff\xff", -1),
        ("l", b"\xff" * 8, -1),
        ("L", b"\xff" * 8, -1),
    ],
)
def test_integer_signedness_is_pikas(code: str, raw: bytes, expected: int) -> None:
    payload = with_headers((b"v", code.encode() + raw))
    assert decode_basic_properties(payload).headers == {"v": expected}
    assert pika_decode(payload).headers == {"v": expected}


@pytest.mark.parametrize(
    ("code", "raw"),
    [("f", struct.pack(">f", 1.0)), ("d", struct.pack(">d", 1.0))],
)
def test_floats_stay_floats_where_pika_makes_them_ints(code: str, raw: bytes) -> None:
    payload = with_headers((b"x-emq-version", code.encode() + raw))
    assert typed(pika_decode(payload).headers["x-emq-version"]) == ("int", 1)
    ours = decode_basic_properties(payload)
    assert typed(ours.headers) == ("dict", [("x-emq-version", ("float", 1.0))])
    assert ours.defects == ()


# -- what pika cannot decode, or decodes into what it cannot encode -----------


def test_a_huge_double_is_a_float_not_a_300_digit_int() -> None:
    payload = with_headers((b"d", b"d" + struct.pack(">d", 1e300)))
    assert decode_basic_properties(payload).headers == {"d": 1e300}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_doubles_decode(value: float) -> None:
    payload = with_headers((b"d", b"d" + struct.pack(">d", value)))
    with pytest.raises((ValueError, OverflowError)):
        pika_decode(payload)
    decoded = decode_basic_properties(payload)
    assert decoded.defects == ()
    assert repr(decoded.headers) == repr({"d": value})


def test_a_timestamp_past_year_9999_is_dropped_and_described() -> None:
    payload = (
        struct.pack(">H", (1 << 13) | (1 << 7))
        + table(
            (b"when", b"T" + struct.pack(">Q", 2**63)),
            (b"after", b"t\x01"),
        )
        + shortstr(b"m-1")
    )
    with pytest.raises(OverflowError):
        pika_decode(payload)
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {"after": True}
    assert decoded.message_id == "m-1"
    assert decoded.defects == (
        f"headers['when']: timestamp {2**63} is past year 9999; dropped",
    )


def test_the_last_second_of_year_9999_is_a_datetime() -> None:
    payload = with_headers((b"when", b"T" + struct.pack(">Q", 253_402_300_799)))
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {
        "when": datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
    }


def test_a_name_that_is_not_utf8_is_dropped_and_described() -> None:
    payload = with_headers((b"\xff\xfe", b"I\x00\x00\x00\x01"), (b"ok", b"V"))
    assert pika_decode(payload).headers == {b"\xff\xfe": 1, "ok": None}
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {"ok": None}
    assert decoded.defects == ("headers[b'\\xff\\xfe']: name is not UTF-8; dropped",)


def test_a_longstr_that_is_not_utf8_is_bytes_as_in_pika() -> None:
    payload = with_headers((b"s", b"S\x00\x00\x00\x02\xff\xfe"))
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {"s": b"\xff\xfe"} == pika_decode(payload).headers
    assert decoded.defects == ()


def test_an_unknown_type_code_ends_its_table_only() -> None:
    inner = table((b"a", b"t\x01"), (b"z", b"Z\x00\x00"), (b"b", b"t\x00"))
    payload = with_headers((b"nested", b"F" + inner), (b"after", b"B\x07"))
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {"nested": {"a": True}, "after": 7}
    assert decoded.defects == (
        "headers['nested']: unknown field type 'Z'; the rest of the table dropped",
    )


def test_a_value_running_past_its_table_is_truncation() -> None:
    body = shortstr(b"a") + b"I\x00\x00"  # an int32 with two of its bytes
    payload = HEADERS_ONLY + struct.pack(">I", len(body)) + body + b"\x00\x00"
    decoded = decode_basic_properties(payload)
    assert decoded.headers == {}
    assert decoded.defects == ("headers: truncated; the rest of the table dropped",)


def test_a_table_longer_than_the_frame_drops_the_rest() -> None:
    payload = struct.pack(">H", (1 << 13) | (1 << 15)) + shortstr(b"text/plain")
    payload += struct.pack(">I", 100_000) + shortstr(b"a") + b"V"
    decoded = decode_basic_properties(payload)
    assert decoded.content_type == "text/plain"
    assert decoded.headers is None
    assert decoded.defects == ("property list: truncated; the rest dropped",)


def test_a_truncated_property_list_keeps_what_came_before() -> None:
    payload = struct.pack(">H", (1 << 7) | (1 << 6)) + shortstr(b"m-2") + b"\x00\x01"
    decoded = decode_basic_properties(payload)
    assert decoded.message_id == "m-2"
    assert decoded.timestamp is None
    assert decoded.defects == ("property list: truncated; the rest dropped",)


@pytest.mark.parametrize("code", [b"F", b"A"])
def test_deep_nesting_is_cut_at_max_depth(code: bytes) -> None:
    value = b"V"
    for _ in range(5000):
        value = code + (table((b"a", value)) if code == b"F" else _array(value))
    payload = with_headers((b"deep", value), (b"after", b"t\x01"))
    with pytest.raises(RecursionError):
        pika_decode(payload)
    decoded = decode_basic_properties(payload)
    assert decoded.headers is not None
    assert decoded.headers["after"] is True
    assert len(decoded.defects) == 1
    assert f"nested deeper than {MAX_DEPTH}; dropped" in decoded.defects[0]
    # the headers table is level 1; the containers down to MAX_DEPTH are kept
    levels, node = 1, decoded.headers["deep"]
    while node is not None:
        levels += 1
        node = (node.get("a") if code == b"F" else node[0]) if node else None
    assert levels == MAX_DEPTH


def _array(*values: bytes) -> bytes:
    body = b"".join(values)
    return struct.pack(">I", len(body)) + body


def test_decode_table_reads_one_table() -> None:
    assert decode_table(table((b"a", b"b\x05"))) == ({"a": 5}, ())
    assert decode_table(b"\x00\x00") == ({}, ("table: truncated",))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_decoder_raise(payload: bytes) -> None:
    decode_basic_properties(payload)
    decode_table(payload)


@settings(max_examples=300)
@given(PROPERTIES, st.data())
def test_damaged_valid_properties_never_raise(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    encoded = bytearray(b"".join(pika.spec.BasicProperties(**fields).encode()))
    for _ in range(data.draw(st.integers(1, 4))):
        if not encoded:
            break
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    decode_basic_properties(bytes(encoded[:cut]))
