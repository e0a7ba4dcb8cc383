from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from envelope_mq.shared import wire
from envelope_mq.shared.errors import DecryptionError, SealingError
from hypothesis import given, settings
from hypothesis import strategies as st

KEY_ID = "key-0123"
WRAPPED = "d3JhcHBlZA=="
CONTEXT_JSON = '{"app":"orders","tenant":"acme"}'

GOOD: dict[str, object] = {
    "x-emq-version": 1,
    "x-emq-alg": "AES-256-GCM",
    "x-emq-key-id": KEY_ID,
    "x-emq-data-key": WRAPPED,
    "x-emq-context": CONTEXT_JSON,
}

short_text = st.text(max_size=60)  # at most 240 UTF-8 bytes: an AMQP shortstr


def _decode_aad(aad: bytes) -> list[bytes | None]:
    """Read the AAD back as docs/wire-format.md §5 describes it."""
    fields: list[bytes | None] = []
    offset = 0
    while offset < len(aad):
        marker = aad[offset]
        offset += 1
        if marker == 0:
            fields.append(None)
            continue
        assert marker == 1
        (size,) = struct.unpack_from(">I", aad, offset)
        offset += 4
        fields.append(aad[offset : offset + size])
        offset += size
    assert offset == len(aad)
    return fields


def _with(**changes: object) -> dict[str, object]:
    headers = dict(GOOD)
    for name, value in changes.items():
        headers[name.replace("_", "-")] = value
    return headers


def _without(name: str) -> dict[str, object]:
    return {k: v for k, v in GOOD.items() if k != name}


def _parse(headers: object) -> tuple[wire.ReceivedEnvelope, dict[str, str]]:
    """Both halves of header parsing, as the Opener runs them on a new header."""
    received = wire.read_headers(headers)
    return received, wire.check_envelope(received)


# --- canonical context --------------------------------------------------------


def test_canonical_context_sorts_keys_and_has_no_whitespace() -> None:
    assert wire.canonical_context({"tenant": "acme", "app": "orders"}) == CONTEXT_JSON


def test_empty_context_is_an_empty_object() -> None:
    assert wire.canonical_context({}) == "{}"


def test_canonical_context_writes_unicode_as_itself() -> None:
    assert wire.canonical_context({"名前": "é🔐"}) == '{"名前":"é🔐"}'


def test_canonical_context_escapes_only_what_json_requires() -> None:
    text = wire.canonical_context({"k": 'q"b\\n\n\x01/\x7f'})
    assert text == '{"k":"q\\"b\\\\n\\n\\u0001/\x7f"}'


@pytest.mark.parametrize(
    "context",
    [
        None,
        "tenant=acme",
        [("tenant", "acme")],
        {"tenant": 1},
        {"tenant": None},
        {"tenant": b"acme"},
        {1: "acme"},
        {"tenant": ["acme"]},
    ],
)
def test_context_that_is_not_str_to_str_is_refused_for_sealing(context: Any) -> None:
    with pytest.raises(SealingError):
        wire.canonical_context(context)


def test_context_with_a_lone_surrogate_is_refused_for_sealing() -> None:
    with pytest.raises(SealingError):
        wire.canonical_context({"k": "\ud800"})


@settings(max_examples=200)
@given(st.dictionaries(st.text(), st.text()))
def test_canonical_context_parses_back_to_itself(context: dict[str, str]) -> None:
    text = wire.canonical_context(context)
    assert wire.parse_context(text) == context
    assert text == json.dumps(
        context, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


# --- associated data ----------------------------------------------------------


def test_aad_lays_out_the_ten_fields_in_order() -> None:
    aad = wire.key_aad(KEY_ID, WRAPPED, "{}") + wire.message_aad(
        "m-1", 1700000000, "text/plain", None, ""
    )
    assert _decode_aad(aad) == [
        (1).to_bytes(8, "big"),
        b"AES-256-GCM",
        KEY_ID.encode(),
        WRAPPED.encode(),
        b"{}",
        b"m-1",
        (1700000000).to_bytes(8, "big"),
        b"text/plain",
        None,
        b"",
    ]


def test_contexts_that_concatenate_alike_encode_differently() -> None:
    ab = wire.key_aad(KEY_ID, WRAPPED, wire.canonical_context({"ab": "c"}))
    a = wire.key_aad(KEY_ID, WRAPPED, wire.canonical_context({"a": "bc"}))
    assert ab != a


def test_absent_property_encodes_differently_from_empty() -> None:
    assert wire.message_aad("m", 0, None, None, None) != wire.message_aad(
        "m", 0, "", None, None
    )


@settings(max_examples=200)
@given(
    key_id=st.text(min_size=1),
    wrapped=st.text(min_size=1),
    context=st.dictionaries(st.text(), st.text(), max_size=4),
    message_id=short_text.filter(bool),
    timestamp=st.integers(0, 2**64 - 1),
    optional=st.tuples(*[st.none() | short_text] * 3),
)
def test_aad_decodes_back_to_exactly_its_fields(
    key_id: str,
    wrapped: str,
    context: dict[str, str],
    message_id: str,
    timestamp: int,
    optional: tuple[str | None, str | None, str | None],
) -> None:
    context_json = wire.canonical_context(context)
    aad = wire.key_aad(key_id, wrapped, context_json) + wire.message_aad(
        message_id, timestamp, *optional
    )
    fields = _decode_aad(aad)
    assert fields[2:7] == [
        key_id.encode(),
        wrapped.encode(),
        context_json.encode(),
        message_id.encode(),
        timestamp.to_bytes(8, "big"),
    ]
    assert fields[7:] == [None if v is None else v.encode() for v in optional]


@pytest.mark.parametrize(
    ("message_id", "timestamp", "content_type"),
    [
        (None, 0, None),
        (b"m", 0, None),
        ("m", -1, None),
        ("m", 2**64, None),
        ("m", True, None),
        ("m", 1.5, None),
        ("m", "0", None),
        ("m", None, None),
        ("m", 0, b"text/plain"),
        ("m", 0, "x" * 256),
        ("é" * 128, 0, None),
        ("\ud800", 0, None),
    ],
)
def test_invalid_properties_are_refused(
    message_id: Any, timestamp: Any, content_type: Any
) -> None:
    with pytest.raises(ValueError, match=r"message_id|timestamp|content_type|codec"):
        wire.message_aad(message_id, timestamp, content_type, None, None)


def test_a_255_byte_property_is_accepted() -> None:
    wire.message_aad("é" * 127 + "x", 0, "t" * 255, None, None)


optional_text = st.one_of(st.none(), short_text)


@settings(max_examples=300)
@given(
    prefix=st.binary(max_size=300),
    suffix=st.sampled_from([b"", b"\x00"]),
    message_id=st.text(max_size=70),
    timestamp=st.integers(min_value=-1, max_value=2**64),
    content_type=optional_text,
    content_encoding=optional_text,
    type_=optional_text,
    extra=st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
)
def test_message_aad_builder_gives_the_definitions_bytes_and_refusals(
    prefix: bytes,
    suffix: bytes,
    message_id: str,
    timestamp: int,
    content_type: str | None,
    content_encoding: str | None,
    type_: str | None,
    extra: bytes | None,
) -> None:
    args = (message_id, timestamp, content_type, content_encoding, type_)
    builder = wire.MessageAad(prefix, suffix)

    def definition() -> bytes | str:
        try:
            own = wire.message_aad(*args)
        except ValueError as refusal:
            return str(refusal)
        return prefix + own + (suffix if extra is None else extra)

    def built() -> bytes | str:
        try:
            return builder.build(*args, extra)
        except ValueError as refusal:
            return str(refusal)

    expected = definition()
    # A miss, then whatever the first call remembered.
    assert built() == expected
    assert built() == expected


def test_message_aad_builder_never_lets_a_str_subclass_through() -> None:
    class Text(str):
        pass

    builder = wire.MessageAad(b"key fields", b"\x00")
    first = builder.build("m-1", 1, "text/plain", None, "t")
    assert builder.build("m-2", 1, "text/plain", None, "t") != first  # remembered
    with pytest.raises(ValueError, match="content_type"):
        builder.build("m-1", 1, Text("text/plain"), None, "t")
    with pytest.raises(ValueError, match="type"):
        builder.build("m-1", 1, "text/plain", None, Text("t"))
    with pytest.raises(ValueError, match="message_id"):
        builder.build(Text("m-1"), 1, "text/plain", None, "t")
    builder.build("m-1", 1, "text/plain", None, None)  # remembered alone
    with pytest.raises(ValueError, match="content_type"):
        builder.build("m-1", 1, Text("text/plain"), None, None)


def test_message_aad_builder_keeps_each_message_apart() -> None:
    builder = wire.MessageAad(b"key fields", b"\x00")
    seen = {
        builder.build(message_id, timestamp, "text/plain", None, None)
        for message_id in ("a", "b", "ab", "é")
        for timestamp in (0, 1, 2**63)
    }
    assert len(seen) == 12


# --- headers --------------------------------------------------------------------


def test_good_headers_parse_to_their_values_and_context() -> None:
    received, context = _parse(GOOD)
    assert received == wire.ReceivedEnvelope(KEY_ID, WRAPPED, CONTEXT_JSON)
    assert context == {"app": "orders", "tenant": "acme"}


def test_other_headers_are_ignored() -> None:
    received, _ = _parse({**GOOD, "x-trace": b"\xff", "x-emq-other": 3})
    assert received.key_id == KEY_ID


MALFORMED: list[Any] = [
    pytest.param(None, id="no headers"),
    pytest.param([("x-emq-version", 1)], id="not a mapping"),
    *[pytest.param(_without(name), id=f"missing {name}") for name in wire.HEADER_NAMES],
    pytest.param(_with(x_emq_version=2), id="version 2"),
    pytest.param(_with(x_emq_version=0), id="version 0"),
    pytest.param(_with(x_emq_version=True), id="version bool"),
    pytest.param(_with(x_emq_version=1.0), id="version float"),
    pytest.param(_with(x_emq_version="1"), id="version str"),
    pytest.param(_with(x_emq_version=b"1"), id="version bytes"),
    pytest.param(_with(x_emq_alg="AES-128-GCM"), id="alg 128"),
    pytest.param(_with(x_emq_alg="aes-256-gcm"), id="alg lower case"),
    pytest.param(_with(x_emq_alg=b"AES-256-GCM"), id="alg bytes"),
    pytest.param(_with(x_emq_alg=None), id="alg null"),
    pytest.param(_with(x_emq_key_id=b"key-0123"), id="key id bytes"),
    pytest.param(_with(x_emq_key_id=""), id="key id empty"),
    pytest.param(_with(x_emq_key_id=7), id="key id int"),
    pytest.param(_with(x_emq_data_key=b"d3JhcHBlZA=="), id="data key bytes"),
    pytest.param(_with(x_emq_data_key=""), id="data key empty"),
    pytest.param(_with(x_emq_data_key=None), id="data key null"),
    pytest.param(_with(x_emq_context=CONTEXT_JSON.encode()), id="context bytes"),
    pytest.param(_with(x_emq_context=""), id="context empty"),
    pytest.param(_with(x_emq_context={"app": "orders"}), id="context table"),
    pytest.param(_with(x_emq_context='{"app": "orders"}'), id="context whitespace"),
    pytest.param(_with(x_emq_context='{"b":"1","a":"2"}'), id="context unsorted"),
    pytest.param(_with(x_emq_context='{"a":"1","a":"1"}'), id="context duplicate key"),
    pytest.param(_with(x_emq_context='{"k":"\\u00e9"}'), id="context needless escape"),
    pytest.param(_with(x_emq_context='{"k":"\\ud800"}'), id="context lone surrogate"),
    pytest.param(_with(x_emq_context='{"k":1}'), id="context int value"),
    pytest.param(_with(x_emq_context='{"k":null}'), id="context null value"),
    pytest.param(_with(x_emq_context='["k"]'), id="context array"),
    pytest.param(_with(x_emq_context='"k"'), id="context string"),
    pytest.param(_with(x_emq_context="{"), id="context invalid json"),
    pytest.param(_with(x_emq_context="[" * 1900 + "]" * 1900), id="context deep"),
    pytest.param(_with(x_emq_context='{"k":"v"} '), id="context trailing space"),
    pytest.param(_with(x_emq_key_id="k\ud800"), id="key id lone surrogate"),
    pytest.param(_with(x_emq_data_key="A" * 4096), id="over 4 KiB"),
]


@pytest.mark.parametrize("headers", MALFORMED)
def test_malformed_headers_all_give_the_one_decryption_error(headers: Any) -> None:
    with pytest.raises(DecryptionError) as caught:
        _parse(headers)
    assert str(caught.value) == DecryptionError.MESSAGE
    assert caught.value.args == (DecryptionError.MESSAGE,)
    assert caught.value.__cause__ is not None


def test_header_size_counts_utf8_bytes_of_names_and_values() -> None:
    fixed = sum(len(name) for name in wire.HEADER_NAMES) + 8 + len("AES-256-GCM")
    assert fixed == 80
    assert wire.envelope_header_size("é", "ab", "{}") == fixed + 2 + 2 + 2


def test_headers_of_exactly_4_kib_are_accepted_and_one_byte_more_refused() -> None:
    room = wire.MAX_ENVELOPE_HEADER_BYTES - wire.envelope_header_size(
        KEY_ID, "", CONTEXT_JSON
    )
    _parse(_with(x_emq_data_key="A" * room))
    with pytest.raises(DecryptionError):
        _parse(_with(x_emq_data_key="A" * (room + 1)))


def test_multibyte_characters_count_by_their_utf8_size_against_the_limit() -> None:
    room = wire.MAX_ENVELOPE_HEADER_BYTES - wire.envelope_header_size(
        KEY_ID, "", CONTEXT_JSON
    )
    with pytest.raises(DecryptionError):
        _parse(_with(x_emq_data_key="é" * (room // 2 + 1)))


# --- body -----------------------------------------------------------------------


def test_body_splits_into_nonce_and_sealed_part() -> None:
    body = bytes(range(40))
    assert wire.split_body(body) == (body[:12], body[12:])


def test_smallest_possible_body_is_28_bytes() -> None:
    wire.split_body(bytes(28))
    with pytest.raises(DecryptionError) as caught:
        wire.split_body(bytes(27))
    assert str(caught.value) == DecryptionError.MESSAGE


@pytest.mark.parametrize("body", [None, "x" * 40, bytearray(40), memoryview(bytes(40))])
def test_body_that_is_not_bytes_is_refused(body: Any) -> None:
    with pytest.raises(DecryptionError):
        wire.split_body(body)


def test_an_empty_message_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        wire.message_aad("", 0, None, None, None)


@pytest.mark.parametrize(
    "names",
    [
        [],
        ["x-emq"],
        ["x-emq", "x-emq-cause"],
        ["x-emq", "x-emq-key-id"],
        ["x-emq-version", "x-emq-alg", "x-emq-key-id", "x-emq-data-key"],
        ["x-emq-version", "x-emq-context", "x-emq"],
        ["x-emqx", "x-emq-quarantine-reason", "app", 7, b"x-emq-cause"],
        ["x-emq-quarantine-reason", "x-emq-other"],
        ["X-EMQ", "x-emq-"],
    ],
)
@pytest.mark.parametrize(
    "allowed",
    [
        frozenset({"x-emq", "x-emq-cause"}),
        frozenset(wire.HEADER_NAMES),
    ],
)
def test_only_ours_agrees_with_our_headers(
    names: list[object], allowed: frozenset[str]
) -> None:
    headers = dict.fromkeys(names, "v")
    assert wire.only_ours(headers, allowed) == (wire.our_headers(headers) <= allowed)


def test_remembered_message_fields_never_let_a_str_subclass_through() -> None:
    class Text(str):
        pass

    mid, ts = "m-1", 1_700_000_000
    first = wire.message_aad(mid, ts, "text/plain", None, "t")
    assert wire.message_aad(mid, ts, "text/plain", None, "t") == first  # remembered
    with pytest.raises(ValueError, match="content_type"):
        wire.message_aad(mid, ts, Text("text/plain"), None, "t")
    with pytest.raises(ValueError, match="type"):
        wire.message_aad(mid, ts, "text/plain", None, Text("t"))
    with pytest.raises(ValueError, match="message_id"):
        wire.message_aad(Text(mid), ts, None, None, None)
