"""Content headers pamqp cannot decode, rewritten before aiormq reads them.

aiormq decodes every frame with pamqp inside its connection's reader task; on
a content header the broker passes but pamqp cannot decode (a timestamp past
year 9999, a field name that is not UTF-8, tables nested past the recursion
limit) the reader fails, the connection is lost and the message stays at the
head of the queue: the asyncio consumer would reconnect forever. The sync
consumer decodes content headers itself (consumer/header_frames.py); here,
where aiormq owns the decoding, :class:`SafeHeaderTransportFactory` gives
aiormq a StreamReader that rewrites such a content-header frame, as the
socket's bytes arrive, into one pamqp can decode: what
:mod:`~envelope_mq.shared.content_header` could decode, plus the header
``x-emq-quarantine-defects`` saying what was dropped.
:func:`~envelope_mq.aio.broker.delivery_of` turns that header into the
delivery's ``defects``, so the message is quarantined as ``malformed``.
Frames pamqp decodes pass through untouched.

aiormq and pamqp types stay in this module and the aio modules beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import struct
from collections.abc import Iterable, Mapping
from typing import Any, SupportsIndex

import aio_pika
import pamqp.frame
import pamqp.header
from aio_pika.abc import TimeoutType
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from pamqp.commands import Basic
from yarl import URL

from envelope_mq.consumer.transport import QUARANTINE_DEFECTS_HEADER
from envelope_mq.shared.content_header import ContentProperties, decode_basic_properties

__all__ = [
    "HEADER_FRAME_BUDGET",
    "SafeHeaderConnection",
    "SafeHeaderRobustConnection",
    "SafeHeaderTransportFactory",
    "pamqp_encodable",
    "plainly_decodable",
    "sanitized_frame",
]

logger = logging.getLogger(__name__)

_HEADER_FRAME = 2
_FRAME_HEAD = 7  # type, channel, size; then the payload and the frame end
_STREAM_LIMIT = 2**16  # asyncio.open_connection's
#: The property list that fits in one content-header frame: RabbitMQ's default
#: frame_max (aiormq keeps no tuned value) less 8 bytes of framing and 12 of
#: class, weight and body size.
HEADER_FRAME_BUDGET = 131072 - 8 - 12
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last a datetime holds
_MAX_DESCRIPTION = 1000
_LAST_32BIT = 0xFFFF_FFFF  # pamqp takes a larger timestamp for milliseconds
# The Basic properties in property-list order: (flag bit, kind).
_PROPERTY_KINDS = (
    (15, "shortstr"),  # content_type
    (14, "shortstr"),  # content_encoding
    (13, "table"),  # headers
    (12, "octet"),  # delivery_mode
    (11, "octet"),  # priority
    (10, "shortstr"),  # correlation_id
    (9, "shortstr"),  # reply_to
    (8, "shortstr"),  # expiration
    (7, "shortstr"),  # message_id
    (6, "timestamp"),
    (5, "shortstr"),  # type
    (4, "shortstr"),  # user_id
    (3, "shortstr"),  # app_id
    (2, "shortstr"),  # cluster_id
)
# Field value type codes of a fixed size (pamqp.decode.TABLE_MAPPING), and
# those with a 32-bit length before them; nested tables and arrays, decimals
# and timestamps are left to pamqp.
_FIXED_SIZE = {
    ord(c): n
    for c, n in zip("tbBsuIilLfdV", (1, 1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 0), strict=True)
}
_LENGTH_PREFIXED = (ord("S"), ord("x"))


class SafeHeaderTransportFactory(TransportFactory):
    """aiormq's TCP or TLS transport, its bytes read through :func:`sanitized_frame`.

    As ``asyncio.open_connection`` (what aiormq's own factories call), with
    a :class:`_SanitizingStreamReader` in place of the StreamReader: the
    frames are looked at as the socket's bytes arrive, in one pass per read,
    so aiormq reads from a plain StreamReader at native speed.
    """

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the socket as aiormq would; read it through the sanitizer."""
        provider = kwargs.pop("ssl_context_provider", None)
        tls = url.scheme == "amqps"
        ssl = await provider.get_context() if tls and provider is not None else None
        loop = asyncio.get_running_loop()
        reader = _SanitizingStreamReader(limit=_STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol,
                host=url.host or "localhost",
                port=url.port or (5671 if tls else 5672),
                ssl=ssl,
                **kwargs,
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class SafeHeaderConnection(aio_pika.Connection):
    """An aio-pika connection reading through :class:`SafeHeaderTransportFactory`.

    aio-pika turns extra ``connect()`` arguments into URL query parameters, so
    the factory is handed to aiormq here, with the connection's own arguments.
    """

    async def connect(self, timeout: TimeoutType = None) -> None:
        """Connect as aio-pika does, through the sanitizing transport.

        A failed attempt closes the connection object here, on the loop:
        aio-pika's ``connect()`` drops it unclosed, and its ``__del__`` then
        makes a ``close()`` coroutine that, outside the loop, is never awaited.
        """
        self.kwargs["transport_factory"] = SafeHeaderTransportFactory()
        try:
            await super().connect(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise


class SafeHeaderRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, every (re)connection through the factory.

    FastStream's RabbitBroker connects with ``connect_robust``; the robust
    connection reconnects with its own ``kwargs``, so the factory set here
    serves the first connection and every later one.
    """

    def __init__(self, url: URL, loop: Any = None, **kwargs: Any) -> None:
        super().__init__(url, loop, **kwargs)
        self.kwargs["transport_factory"] = SafeHeaderTransportFactory()


class _SanitizingStreamReader(asyncio.StreamReader):
    """A StreamReader whose content-header frames are made decodable on arrival.

    Other frames pass as they come, in pieces if they arrive so; a content
    header is held until whole, then passed on, rewritten when pamqp cannot
    decode it. A broker's protocol header ("AMQP...", a refused version)
    ends the looking: aiormq refuses it.
    """

    _held = b""  # the start of a content header frame (or of a frame's head)
    _skip = 0  # what is still to come of a frame passed on in pieces
    _raw = False

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self._raw:
            super().feed_data(data)
            return
        data = data if isinstance(data, bytes) else bytes(data)
        if self._held:
            data, self._held = self._held + data, b""
        size = len(data)
        pos = min(self._skip, size)
        self._skip -= pos
        start = 0  # the start of what passes untouched
        parts: list[bytes] = []
        while pos < size:
            if size - pos < _FRAME_HEAD:
                break
            if data.startswith(b"AMQP", pos):
                self._raw, pos = True, size
                break
            end = pos + _FRAME_HEAD + 1 + int.from_bytes(data[pos + 3 : pos + 7])
            if data[pos] != _HEADER_FRAME:
                if end > size:
                    self._skip, pos = end - size, size
                    break
                pos = end
                continue
            if end > size:
                break
            frame = data[pos:end]
            fixed = sanitized_frame(frame)
            if fixed is not frame:
                parts += (data[start:pos], fixed)
                start = end
            pos = end
        self._held = data[pos:]
        out = data[start:pos]
        if parts:
            parts.append(out)
            out = b"".join(parts)
        if out:
            super().feed_data(out)

    def feed_eof(self) -> None:
        if self._held:  # a frame cut short: aiormq sees it so
            super().feed_data(self._held)
            self._held = b""
        super().feed_eof()


def sanitized_frame(frame: bytes) -> bytes:
    """``frame`` if pamqp decodes it, else a content header pamqp can decode."""
    if plainly_decodable(frame):
        return frame  # what nearly every message is: no second full decode
    try:
        pamqp.frame.unmarshal(frame)
        return frame
    except Exception as exc:  # whatever pamqp raises here (RecursionError too)
        logger.debug(
            "rewriting a content header pamqp cannot decode: %s", type(exc).__name__
        )
    channel = int.from_bytes(frame[1:3], "big")
    payload = frame[7:-1]
    if len(payload) < 12:
        return frame  # not a content header the broker would send; aiormq fails
    _class, weight, body_size = struct.unpack_from(">HHQ", payload)
    decoded = decode_basic_properties(payload[12:])
    defects = list(decoded.defects) or ["content header: not decodable by pamqp"]
    timestamp = None
    if decoded.timestamp is not None and decoded.timestamp <= _LAST_SECOND:
        timestamp = datetime.datetime.fromtimestamp(decoded.timestamp, datetime.UTC)
    elif decoded.timestamp is not None:
        defects.append(f"timestamp: {decoded.timestamp} is past year 9999; dropped")
    # Each try keeps less: all that was decoded, then no headers, then nothing
    # but the description (pamqp validates some properties as it builds them).
    for keep in ("all", "properties", "nothing"):
        if keep != "all":
            defects.append(f"keeping {keep}: pamqp could not carry the rest")
        try:
            properties = _properties(decoded, timestamp, defects, keep)
            rewritten: bytes = pamqp.frame.marshal(
                pamqp.header.ContentHeader(weight, body_size, properties), channel
            )
            pamqp.frame.unmarshal(rewritten)
        except Exception as exc:  # whatever pamqp refuses to build or read back
            logger.debug("pamqp cannot carry the rewrite: %s", type(exc).__name__)
            continue
        return rewritten
    return frame  # unreachable in practice: an empty property list always builds


def plainly_decodable(frame: bytes) -> bool:
    """True when pamqp certainly decodes the content-header ``frame``.

    A quick walk (a few microseconds, where pamqp's full decode takes more
    than ten) that accepts only the plain: one flag word, ASCII shortstrs,
    timestamps before 2106, and a flat header table of ASCII names with
    fixed-size values, strings and byte arrays, everything ending where the
    frame says. False means "let pamqp try", not "undecodable".
    """
    end = len(frame) - 1  # the frame-end octet
    pos = _FRAME_HEAD + 12  # class, weight, body size
    if end < pos + 2:
        return False
    flags = int.from_bytes(frame[pos : pos + 2])
    pos += 2
    if flags & 0b11:  # a second flag word, or a bit no property has
        return False
    for bit, kind in _PROPERTY_KINDS:
        if not flags >> bit & 1:
            continue
        if kind == "shortstr":
            if pos >= end:
                return False
            stop = pos + 1 + frame[pos]
            if stop > end or not frame[pos + 1 : stop].isascii():
                return False
            pos = stop
        elif kind == "octet":
            pos += 1
        elif kind == "timestamp":
            if pos + 8 > end or int.from_bytes(frame[pos : pos + 8]) > _LAST_32BIT:
                return False  # pamqp reads larger ones as milliseconds
            pos += 8
        else:  # the header table
            if pos + 4 > end:
                return False
            table_end = pos + 4 + int.from_bytes(frame[pos : pos + 4])
            if table_end > end or not _plain_table(frame, pos + 4, table_end):
                return False
            pos = table_end
    return pos == end


def _plain_table(frame: bytes, pos: int, end: int) -> bool:
    while pos < end:
        code_at = pos + 1 + frame[pos]
        if code_at >= end or not frame[pos + 1 : code_at].isascii():
            return False
        code, pos = frame[code_at], code_at + 1
        size = _FIXED_SIZE.get(code)
        if size is None:
            if code not in _LENGTH_PREFIXED or pos + 4 > end:
                return False
            size = 4 + int.from_bytes(frame[pos : pos + 4])
        pos += size
    return pos == end


def _properties(
    decoded: ContentProperties,
    timestamp: datetime.datetime | None,
    defects: list[str],
    keep: str,
) -> Basic.Properties:
    text = "; ".join(defects)
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 3] + "..."
    headers: dict[str, Any] = {}
    if keep == "all" and decoded.headers:
        headers = {k: pamqp_encodable(v) for k, v in decoded.headers.items()}
    headers[QUARANTINE_DEFECTS_HEADER] = text
    if keep == "nothing":
        return Basic.Properties(headers=headers)
    return Basic.Properties(
        content_type=decoded.content_type,
        content_encoding=decoded.content_encoding,
        headers=headers,
        delivery_mode=decoded.delivery_mode,
        priority=decoded.priority,
        correlation_id=decoded.correlation_id,
        reply_to=decoded.reply_to,
        expiration=decoded.expiration,
        message_id=decoded.message_id,
        timestamp=timestamp,
        message_type=decoded.type,
        user_id=decoded.user_id,
        app_id=decoded.app_id,
        cluster_id=decoded.cluster_id or "",
    )


def pamqp_encodable(value: Any) -> Any:
    """``value`` as pamqp encodes it (bytes only as a bytearray), nested too."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, Mapping):
        return {k: pamqp_encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pamqp_encodable(v) for v in value]
    return value
