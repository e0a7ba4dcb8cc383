"""Content headers pamqp cannot decode, rewritten before aiormq reads them.

aiormq decodes every frame with pamqp inside its connection's reader task; on
a content header the broker passes but pamqp cannot decode (a timestamp past
year 9999, a field name that is not UTF-8, tables nested past the recursion
limit) the reader fails, the connection is lost and the message stays at the
head of the queue: the asyncio consumer would reconnect forever. The sync
consumer decodes content headers itself (consumer/header_frames.py); here,
where aiormq owns the decoding, :class:`SafeHeaderTransportFactory` puts a
reader between the socket and aiormq that rewrites such a content-header frame
into one pamqp can decode: what :mod:`~envelope_mq.shared.content_header`
could decode, plus the header ``x-emq-quarantine-defects`` saying what was
dropped. :func:`~envelope_mq.aio.broker.delivery_of` turns that header into
the delivery's ``defects``, so the message is quarantined as ``malformed``.
Frames pamqp decodes pass through untouched.

aiormq and pamqp types stay in this module and the aio modules beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import struct
from collections.abc import Mapping
from typing import Any, cast

import aio_pika
import pamqp.frame
import pamqp.header
from aio_pika.abc import TimeoutType
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
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
    "sanitized_frame",
]

logger = logging.getLogger(__name__)

_HEADER_FRAME = 2
#: The property list that fits in one content-header frame: RabbitMQ's default
#: frame_max (aiormq keeps no tuned value) less 8 bytes of framing and 12 of
#: class, weight and body size.
HEADER_FRAME_BUDGET = 131072 - 8 - 12
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last a datetime holds
_MAX_DESCRIPTION = 1000


class SafeHeaderTransportFactory(TransportFactory):
    """aiormq's TCP or TLS transport, read through :func:`sanitized_frame`."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the socket as aiormq would; wrap its reader."""
        inner = (
            TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        )
        reader, writer = await inner.create(url, **kwargs)
        # aiormq's FrameReceiver calls at_eof, read and readexactly only.
        return cast(asyncio.StreamReader, _SanitizingReader(reader)), writer


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


class _SanitizingReader:
    """Hands aiormq whole frames, content headers made decodable."""

    def __init__(self, inner: asyncio.StreamReader) -> None:
        self._inner = inner
        self._out = bytearray()

    def at_eof(self) -> bool:
        return not self._out and self._inner.at_eof()

    async def read(self, n: int = -1) -> bytes:
        data = bytes(self._out) + await self._inner.read(n)
        self._out.clear()
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._out) < n:
            await self._next_frame()
        chunk = bytes(self._out[:n])
        del self._out[:n]
        return chunk

    async def _next_frame(self) -> None:
        head = await self._inner.readexactly(7)
        if head.startswith(b"AMQP"):  # the broker's protocol header: aiormq refuses
            self._out += head
            return
        size = int.from_bytes(head[3:7], "big")
        frame = head + await self._inner.readexactly(size + 1)
        self._out += sanitized_frame(frame) if head[0] == _HEADER_FRAME else frame


def sanitized_frame(frame: bytes) -> bytes:
    """``frame`` if pamqp decodes it, else a content header pamqp can decode."""
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
