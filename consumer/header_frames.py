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
tests against the real broker. :func:`connection_class` checks the hook's
shape once per process: on a pika without it, connections fall back to
pika's own decoding (valid messages still flow, hostile content headers drop
the connection again) and a WARNING says so once, naming the pika version.
"""

from __future__ import annotations

import functools
import inspect
import logging
import struct
from typing import Any

import pika
import pika.connection
import pika.frame
from envelope_mq.shared.content_header import decode_basic_properties

__all__ = [
    "SafeHeaderConnection",
    "connection_class",
    "header_frame_budget",
    "hook_usable",
    "negotiated_frame_max",
]

_log = logging.getLogger(__name__)
_warned: set[str] = set()

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


@functools.cache
def hook_usable() -> bool:
    """Whether pika reads frames the way :class:`SafeHeaderConnection` overrides.

    ``Connection._read_frame(self)`` decodes one frame from ``_frame_buffer``
    (set up with the connection's state) and ``_on_data_available`` calls it.
    """
    base = pika.connection.Connection
    read = getattr(base, "_read_frame", None)
    try:
        if not callable(read) or list(inspect.signature(read).parameters) != ["self"]:
            return False
        state = base._init_connection_state.__code__.co_names
        reader = base._on_data_available.__code__.co_names
    except (AttributeError, TypeError, ValueError):
        return False
    return "_frame_buffer" in state and "_read_frame" in reader


def connection_class(decode_headers: bool = True) -> type[pika.SelectConnection]:
    """The connection class to consume with: ours, or pika's own as the fallback.

    ``decode_headers=False`` takes the fallback on purpose (it is how tests
    reach it on a pika that has the hook).
    """
    if decode_headers and hook_usable():
        return SafeHeaderConnection
    why = "turned off" if not decode_headers else "its private _read_frame hook changed"
    if why not in _warned:
        _warned.add(why)
        _log.warning(
            "content headers are decoded by pika %s (%s): hostile content headers "
            "are not defended and drop the connection",
            pika.__version__,
            why,
            extra={"event": "header_decoder_fallback"},
        )
    return pika.SelectConnection  # type: ignore[no-any-return]


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
