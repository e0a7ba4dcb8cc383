"""Decode an AMQP 0-9-1 Basic content header without trusting a byte of it.

A publisher writes the content header; the broker checks less than one would
hope (it passes headers with timestamps past year 9999, doubles of any size,
names that are not UTF-8, tables nested thousands deep). pika's decoder raises
on such input while reading the socket, before any callback: a consumer
reading through it reconnects forever, with the message at the head of the
queue. :func:`decode_basic_properties` never raises on any input: it decodes
what it can and lists the rest as *defects* (dropped, and described), so the
consumer can quarantine the message as ``malformed``.

It also keeps the AMQP type code visible in the Python type, which pika does
not (it turns the floats ``f`` and ``d`` into ``int``): an ``int`` comes only
from the integer codes of :data:`INTEGER_CODES`. On valid input the result
equals pika's, value for value, apart from floats.

Type codes and their values (signedness as pika and RabbitMQ read them):

=========================  ==============================================
``b B s u U i I l L``      ``int`` (8, 16, 32, 64 bits; ``l`` and ``L`` signed)
``f d``                    ``float`` (NaN and infinities included)
``D``                      ``decimal.Decimal``
``t``                      ``bool``
``S``                      ``str``, or ``bytes`` when not UTF-8
``x``                      ``bytes``
``T``                      ``datetime`` (UTC); past year 9999 a defect
``A``                      ``list``
``F``                      ``dict`` (a nested table)
``V``                      ``None``
=========================  ==============================================

No I/O, no pika.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INTEGER_CODES",
    "MAX_DEPTH",
    "ContentProperties",
    "decode_basic_properties",
    "decode_table",
]

#: The type codes that decode to ``int``; integer fields accept only these.
INTEGER_CODES = frozenset("bBsuUiIlL")
#: Tables and arrays nested deeper than this are dropped (and described).
MAX_DEPTH = 32

_UTC = datetime.UTC
# The last second a datetime can hold (9999-12-31T23:59:59Z).
_MAX_TIMESTAMP = 253_402_300_799
_FIXED = {
    "b": struct.Struct(">b"),
    "B": struct.Struct(">B"),
    "s": struct.Struct(">h"),
    "u": struct.Struct(">H"),
    "U": struct.Struct(">h"),
    "i": struct.Struct(">I"),
    "I": struct.Struct(">i"),
    "l": struct.Struct(">q"),
    "L": struct.Struct(">q"),
    "f": struct.Struct(">f"),
    "d": struct.Struct(">d"),
    "t": struct.Struct(">B"),
    "T": struct.Struct(">Q"),
}
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DECIMAL = struct.Struct(">Bi")


class _TruncatedError(Exception):
    """A length or value runs past the end of its container."""


class _UnknownTypeError(Exception):
    """A type code AMQP does not define."""


@dataclass(frozen=True, slots=True)
class ContentProperties:
    """The Basic properties of one delivery, as far as they could be decoded.

    AMQP says a shortstr holds UTF-8, so a shortstr property that is not
    UTF-8 is a defect (pika would hand it over as ``bytes``). ``defects`` says
    what could not be decoded and was dropped; a delivery with defects is
    malformed.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None
    defects: tuple[str, ...] = field(default=())


# (name, flag bit, kind) in property-list order
_PROPERTIES = (
    ("content_type", 15, "shortstr"),
    ("content_encoding", 14, "shortstr"),
    ("headers", 13, "table"),
    ("delivery_mode", 12, "octet"),
    ("priority", 11, "octet"),
    ("correlation_id", 10, "shortstr"),
    ("reply_to", 9, "shortstr"),
    ("expiration", 8, "shortstr"),
    ("message_id", 7, "shortstr"),
    ("timestamp", 6, "timestamp"),
    ("type", 5, "shortstr"),
    ("user_id", 4, "shortstr"),
    ("app_id", 3, "shortstr"),
    ("cluster_id", 2, "shortstr"),
)


def decode_basic_properties(payload: bytes) -> ContentProperties:
    """Decode a Basic property list (the content header after its 12 bytes).

    Never raises: what cannot be decoded is left out and named in ``defects``.
    """
    defects: list[str] = []
    values: dict[str, Any] = {}
    end = len(payload)
    offset = 0
    flags = 0
    try:
        word = 1
        shift = 0
        while word & 1:  # bit 0 continues the flags into another word
            word = _read(_U16, payload, offset, end)
            offset += 2
            flags |= word << shift
            shift += 16
        for name, bit, kind in _PROPERTIES:
            if not flags & (1 << bit):
                continue
            if kind == "shortstr":
                text, offset = _shortstr(payload, offset, end)
                if isinstance(text, str):
                    values[name] = text
                else:
                    defects.append(f"{name}: {text!r} is not UTF-8; dropped")
            elif kind == "octet":
                values[name] = _read(_U8, payload, offset, end)
                offset += 1
            elif kind == "timestamp":
                values[name] = _read(_U64, payload, offset, end)
                offset += 8
            else:
                values[name], offset = _table(
                    payload, offset, end, 1, "headers", defects
                )
    except _TruncatedError:
        defects.append("property list: truncated; the rest dropped")
    return ContentProperties(**values, defects=tuple(defects))


def decode_table(payload: bytes) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Decode one field table (with its length prefix); return it and its defects."""
    defects: list[str] = []
    try:
        table, _ = _table(payload, 0, len(payload), 1, "table", defects)
    except _TruncatedError:
        return {}, ("table: truncated",)
    return table, tuple(defects)


def _read(fmt: struct.Struct, data: bytes, offset: int, end: int) -> Any:
    if offset + fmt.size > end:
        raise _TruncatedError
    return fmt.unpack_from(data, offset)[0]


def _span(data: bytes, offset: int, end: int, length: int) -> int:
    stop = offset + length
    if stop > end:
        raise _TruncatedError
    return stop


def _shortstr(data: bytes, offset: int, end: int) -> tuple[str | bytes, int]:
    length = _read(_U8, data, offset, end)
    stop = _span(data, offset + 1, end, length)
    raw = data[offset + 1 : stop]
    try:
        return raw.decode("utf-8"), stop
    except UnicodeDecodeError:
        return raw, stop


def _table(
    data: bytes, offset: int, end: int, depth: int, where: str, defects: list[str]
) -> tuple[dict[str, Any], int]:
    """Decode the table at ``offset``; a defect inside it ends only this table."""
    size = _read(_U32, data, offset, end)
    stop = _span(data, offset + 4, end, size)
    offset += 4
    table: dict[str, Any] = {}
    try:
        while offset < stop:
            name, offset = _shortstr(data, offset, stop)
            label = f"{where}[{_show(name)}]"
            value, offset, ok = _value(data, offset, stop, depth, label, defects)
            if not isinstance(name, str):
                defects.append(f"{label}: name is not UTF-8; dropped")
            elif ok:
                table[name] = value
    except _TruncatedError:
        defects.append(f"{where}: truncated; the rest of the table dropped")
    except _UnknownTypeError as exc:
        defects.append(f"{where}: {exc}; the rest of the table dropped")
    return table, stop


def _array(
    data: bytes, offset: int, end: int, depth: int, where: str, defects: list[str]
) -> tuple[list[Any], int]:
    size = _read(_U32, data, offset, end)
    stop = _span(data, offset + 4, end, size)
    offset += 4
    items: list[Any] = []
    try:
        while offset < stop:
            label = f"{where}[{len(items)}]"
            value, offset, ok = _value(data, offset, stop, depth, label, defects)
            if ok:
                items.append(value)
    except _TruncatedError:
        defects.append(f"{where}: truncated; the rest of the array dropped")
    except _UnknownTypeError as exc:
        defects.append(f"{where}: {exc}; the rest of the array dropped")
    return items, stop


def _value(
    data: bytes, offset: int, end: int, depth: int, where: str, defects: list[str]
) -> tuple[Any, int, bool]:
    """Decode one typed value: (value, next offset, whether to keep it)."""
    code = chr(_read(_U8, data, offset, end))
    offset += 1
    fixed = _FIXED.get(code)
    if fixed is not None:
        raw = _read(fixed, data, offset, end)
        offset += fixed.size
        if code == "t":
            return bool(raw), offset, True
        if code == "T":
            if raw > _MAX_TIMESTAMP:
                defects.append(f"{where}: timestamp {raw} is past year 9999; dropped")
                return None, offset, False
            return datetime.datetime.fromtimestamp(raw, _UTC), offset, True
        return raw, offset, True
    if code in "SxFA":
        if code in "FA" and depth >= MAX_DEPTH:
            size = _read(_U32, data, offset, end)
            stop = _span(data, offset + 4, end, size)
            defects.append(f"{where}: nested deeper than {MAX_DEPTH}; dropped")
            return None, stop, False
        if code == "F":
            table, offset = _table(data, offset, end, depth + 1, where, defects)
            return table, offset, True
        if code == "A":
            items, offset = _array(data, offset, end, depth + 1, where, defects)
            return items, offset, True
        size = _read(_U32, data, offset, end)
        stop = _span(data, offset + 4, end, size)
        raw_bytes = data[offset + 4 : stop]
        if code == "S":
            try:
                return raw_bytes.decode("utf-8"), stop, True
            except UnicodeDecodeError:
                return raw_bytes, stop, True
        return raw_bytes, stop, True
    if code == "D":
        _span(data, offset, end, _DECIMAL.size)
        scale, digits = _DECIMAL.unpack_from(data, offset)
        # pika's arithmetic, so that both give the same Decimal
        value = decimal.Decimal(digits) * (decimal.Decimal(10) ** -scale)
        return value, offset + _DECIMAL.size, True
    if code == "V":
        return None, offset, True
    raise _UnknownTypeError(f"unknown field type {code!r}")


def _show(name: str | bytes) -> str:
    """A field name for a defect text: quoted, control characters escaped."""
    return repr(name)
