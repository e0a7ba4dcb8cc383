"""AMQP 0-9-1 frames of one ``basic.publish``, marshalled fast.

pika marshals every message's properties from scratch, headers table included,
which costs more than sealing the message. Our headers are the same five
x-emq-* values for every message under one data key, so this module encodes
that table once and builds the rest with ``struct``. Wire format v2's
per-message ``x-emq-cause`` (the stage sets it on every output) is left out of
that cache: an AMQP table is a length-prefixed run of entries, so the cached
entries get the cause entry appended and a new length. The unit tests check the
output byte for byte against pika's own marshaller.

A message is published as three kinds of frame: the ``basic.publish`` method,
the content header (body size and properties) and the body, split to the
negotiated frame size. Method and header payloads do not depend on the channel
and are built in the caller's thread; :func:`frame_message` wraps them in
frames for a channel number in the I/O thread.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import pika.data
from envelope_mq.shared.errors import SealingError

__all__ = ["frame_message", "header_payload", "method_payload"]

_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
_BASIC_PUBLISH = 40
_PERSISTENT = b"\x02"

# Property flags of the basic class, in wire order (AMQP 0-9-1 §4.2.6.1).
_CONTENT_TYPE = 1 << 15
_CONTENT_ENCODING = 1 << 14
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_MESSAGE_ID = 1 << 7
_TIMESTAMP = 1 << 6
_TYPE = 1 << 5

_frame_head = struct.Struct(">BHI").pack
_header_head = struct.Struct(">HHQH").pack
_timestamp = struct.Struct(">Q").pack
_method_head = struct.Struct(">HHH").pack
_long = struct.Struct(">I").pack

# The one per-message header (shared/wire_v2.CAUSE_HEADER, not imported: this
# module knows the AMQP encoding, not the envelope) and its entry up to the
# value: key as a short string, then the long string type tag.
_CAUSE = "x-emq-cause"
_CAUSE_ENTRY = bytes((len(_CAUSE),)) + _CAUSE.encode("ascii") + b"S"

# header set -> (the whole table, its entries without the length prefix)
_tables: dict[tuple[tuple[str, object], ...], tuple[bytes, bytes]] = {}
_MAX_TABLES = 256  # distinct header sets: one per data key in practice


def _short(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise SealingError(f"{what} is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _cached(items: tuple[tuple[str, object], ...]) -> tuple[bytes, bytes]:
    encoded = _tables.get(items)
    if encoded is None:
        pieces: list[bytes] = []
        pika.data.encode_table(pieces, dict(items))
        table = b"".join(pieces)
        encoded = (table, table[4:])
        if len(_tables) >= _MAX_TABLES:
            _tables.clear()
        _tables[items] = encoded
    return encoded


def _table(headers: Mapping[str, object]) -> bytes:
    items = tuple(headers.items())
    name, value = items[-1] if items else ("", None)
    if name == _CAUSE and type(value) is str:
        # Same bytes as pika's encode_table, whose entries follow the dict's
        # order: the cause is last (the envelope adds it last), so it is the
        # cached entries plus one long string entry.
        entries = _cached(items[:-1])[1]
        cause = value.encode("utf-8")
        size = len(entries) + len(_CAUSE_ENTRY) + 4 + len(cause)
        return b"".join((_long(size), entries, _CAUSE_ENTRY, _long(len(cause)), cause))
    return _cached(items)[0]


def method_payload(exchange: str, routing_key: str) -> bytes:
    """The ``basic.publish`` payload, always with ``mandatory`` set."""
    return b"".join(
        (
            _method_head(_BASIC_CLASS, _BASIC_PUBLISH, 0),
            _short(exchange, "the exchange name"),
            _short(routing_key, "the routing key"),
            b"\x01",  # mandatory=1, immediate=0: unroutable comes back, never dropped
        )
    )


def header_payload(
    body_size: int,
    headers: Mapping[str, object],
    *,
    message_id: str,
    timestamp: int,
    content_type: str | None = None,
    content_encoding: str | None = None,
    type: str | None = None,
) -> bytes:
    """The content header payload of a persistent message with these properties."""
    flags = _HEADERS | _DELIVERY_MODE | _MESSAGE_ID | _TIMESTAMP
    parts: list[bytes] = []
    if content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(_short(content_type, "content_type"))
    if content_encoding is not None:
        flags |= _CONTENT_ENCODING
        parts.append(_short(content_encoding, "content_encoding"))
    parts.append(_table(headers))
    parts.append(_PERSISTENT)
    parts.append(_short(message_id, "message_id"))
    parts.append(_timestamp(timestamp))
    if type is not None:
        flags |= _TYPE
        parts.append(_short(type, "type"))
    return _header_head(_BASIC_CLASS, 0, body_size, flags) + b"".join(parts)


def frame_message(
    channel: int, method: bytes, header: bytes, body: bytes, body_max: int
) -> list[bytes]:
    """Every frame of one message on ``channel``, ready to write in order."""
    frames = [
        _frame_head(_METHOD, channel, len(method)),
        method,
        _FRAME_END,
        _frame_head(_HEADER, channel, len(header)),
        header,
        _FRAME_END,
    ]
    if len(body) <= body_max:  # the common case: no copy
        if body:
            frames += (_frame_head(_BODY, channel, len(body)), body, _FRAME_END)
        return frames
    view = memoryview(body)
    for start in range(0, len(body), body_max):
        chunk = view[start : start + body_max]
        frames += (_frame_head(_BODY, channel, len(chunk)), bytes(chunk), _FRAME_END)
    return frames
