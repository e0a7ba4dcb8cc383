"""Content headers decoded by our own decoder, not pika's, on the consumer's connection.

pika decodes a delivery's content header inside its socket reader, and raises
there on input the broker lets through (a timestamp past year 9999, a NaN
double, tables nested deeper than Python recurses): the exception escapes
before any callback, the connection is lost, and the message comes back at
the head of the queue on every reconnect. :class:`SafeHeaderConnection`
decodes content-header frames with
:func:`~envelope_mq.shared.content_header.decode_basic_properties`, which
never raises; the delivery callback receives a
:class:`~envelope_mq.shared.content_header.ContentProperties` (whose
``defects`` say what was dropped) in place of pika's ``BasicProperties``.
Every other frame is pika's business.

This hooks into pika below its public API (a ``SelectConnection`` subclass
given to ``BlockingConnection``); it is kept to this module and checked by
tests against the real broker.
"""

from __future__ import annotations

import struct
from typing import Any

import pika
import pika.frame
from envelope_mq.shared.content_header import decode_basic_properties

__all__ = ["SafeHeaderConnection", "header_frame_budget", "negotiated_frame_max"]

_HEADER_FRAME = 2
_FRAME_END = 0xCE
_FRAME_OVERHEAD = 8  # type, channel, size, frame end
_HEADER_FIXED = struct.Struct(">BHIHHQ")  # frame header + class, weight, body size


class SafeHeaderConnection(pika.SelectConnection):  # type: ignore[misc]
    """A ``SelectConnection`` whose content headers never fail to decode."""

    def _read_frame(self) -> tuple[int, Any]:
        buffer = self._frame_buffer
        if len(buffer) < _HEADER_FIXED.size or buffer[0] != _HEADER_FRAME:
            return super()._read_frame()  # type: ignore[no-any-return]
        _kind, channel, size, _class, _weight, body_size = _HEADER_FIXED.unpack_from(
            buffer
        )
        end = 7 + size + 1
        if len(buffer) < end:
            return 0, None  # the rest of the frame is still on its way
        if buffer[end - 1] != _FRAME_END or size < 12:
            return super()._read_frame()  # type: ignore[no-any-return]  # pika raises
        properties = decode_basic_properties(buffer[_HEADER_FIXED.size : end - 1])
        # pika hands the frame's properties object to the delivery callback
        # as it is; nothing in between reads it.
        return end, pika.frame.Header(channel, body_size, properties)


def negotiated_frame_max(connection: pika.BlockingConnection) -> int:
    """The largest frame this connection may send, as agreed with the broker."""
    # pika keeps the tuned value on its private connection object only.
    impl = getattr(connection, "_impl", None)
    params = getattr(impl, "params", None)
    frame_max = getattr(params, "frame_max", None)
    # pika's default is also the broker's; AMQP's minimum otherwise.
    return frame_max if isinstance(frame_max, int) and frame_max >= 4096 else 4096


def header_frame_budget(frame_max: int) -> int:
    """How many bytes of property list fit in one content-header frame."""
    return frame_max - _FRAME_OVERHEAD - 12
