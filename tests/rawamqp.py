"""A minimal AMQP 0-9-1 publisher writing its frames by hand (tests/ is on sys.path).

The frame-level tests need to put bytes on the wire that no client library
would write: content headers with unknown field types, truncated tables,
timestamps past year 9999, names that are not UTF-8. This client does only
what they need — handshake (PLAIN), one channel in confirm mode, and
``basic.publish`` with a caller-made content-header payload — with ``struct``
and nothing of pika. Publishes are pipelined: :meth:`RawAmqpPublisher.publish`
sends, :meth:`RawAmqpPublisher.sync` collects the broker's verdicts.

When the broker refuses a frame it closes the channel or the connection; the
client notes which publishes were refused, and opens a fresh channel (or
connection) for the next ones.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = [
    "RawAmqpPublisher",
    "Verdicts",
    "basic_properties",
    "field",
    "longstr",
    "shortstr",
    "table",
]

_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8
_FRAME_END = 0xCE
_CONNECTION, _CHANNEL, _BASIC, _CONFIRM = 10, 20, 60, 85

# Basic property flags, in the order of the property list.
_FLAGS = {
    "content_type": 1 << 15,
    "content_encoding": 1 << 14,
    "headers": 1 << 13,
    "delivery_mode": 1 << 12,
    "priority": 1 << 11,
    "correlation_id": 1 << 10,
    "reply_to": 1 << 9,
    "expiration": 1 << 8,
    "message_id": 1 << 7,
    "timestamp": 1 << 6,
    "type": 1 << 5,
    "user_id": 1 << 4,
    "app_id": 1 << 3,
    "cluster_id": 1 << 2,
}


def shortstr(raw: bytes) -> bytes:
    """An AMQP shortstr of ``raw`` (at most 255 bytes)."""
    return bytes([len(raw)]) + raw


def longstr(raw: bytes) -> bytes:
    """An AMQP longstr of ``raw``."""
    return struct.pack(">I", len(raw)) + raw


def table(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A field table of (name, type code + encoded value) pairs, already encoded."""
    body = b"".join(shortstr(name) + value for name, value in fields)
    return longstr(body)


def field(value: object) -> bytes:
    """A plain value with its type code: str S, bytes x, bool t, int I or l, None V."""
    if isinstance(value, str):
        return b"S" + longstr(value.encode())
    if isinstance(value, bytes):
        return b"x" + longstr(value)
    if isinstance(value, bool):
        return b"t" + bytes([value])
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if value is None:
        return b"V"
    raise TypeError(f"no plain AMQP encoding for {type(value).__name__}")


def basic_properties(fields: dict[str, bytes], *, extra_flags: int = 0) -> bytes:
    """A Basic property list: flags, then each given field's encoded bytes in order.

    ``extra_flags`` sets flag bits no property uses (bit 1; bit 0 would say
    another flag word follows).
    """
    flags = extra_flags
    parts = []
    for name, bit in _FLAGS.items():
        if name in fields:
            flags |= bit
            parts.append(fields[name])
    return struct.pack(">H", flags) + b"".join(parts)


@dataclass
class Verdicts:
    """What the broker said about the publishes since the last :meth:`sync`."""

    acked: list[int]  # the caller's ids the broker confirmed
    refused: list[tuple[int, str]]  # (id, the broker's reply) for closed channels


class RawAmqpPublisher:
    """One hand-written connection with one confirm-mode channel."""

    def __init__(self, url: str, *, frame_max: int = 131072) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.user = unquote(parts.username or "guest").encode()
        self._password = unquote(parts.password or "guest").encode()
        self._vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._frame_max = frame_max
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._channel = 0
        self._seq = 0  # confirm sequence number on the current channel
        self._in_flight: dict[int, int] = {}  # seq -> caller's id
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []

    # -- frames -----------------------------------------------------------

    def _send(self, kind: int, channel: int, payload: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(
            struct.pack(">BHI", kind, channel, len(payload))
            + payload
            + bytes([_FRAME_END])
        )

    def _method(self, channel: int, class_id: int, method_id: int, args: bytes) -> None:
        self._send(_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)

    def _read_frame(self) -> tuple[int, int, bytes]:
        assert self._sock is not None
        while True:
            if len(self._buffer) >= 7:
                kind, channel, size = struct.unpack_from(">BHI", self._buffer)
                if len(self._buffer) >= size + 8:
                    payload = self._buffer[7 : 7 + size]
                    if self._buffer[7 + size] != _FRAME_END:
                        raise ConnectionError("bad frame end from the broker")
                    self._buffer = self._buffer[size + 8 :]
                    return kind, channel, payload
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the socket")
            self._buffer += data

    def _expect(self, class_id: int, method_id: int) -> bytes:
        while True:
            kind, _channel, payload = self._read_frame()
            if kind != _METHOD:
                continue
            got = struct.unpack_from(">HH", payload)
            if got == (class_id, method_id):
                return payload[4:]
            if got == (_CONNECTION, 50):
                raise ConnectionError(f"connection closed: {_reply(payload)}")
            raise ConnectionError(f"expected {(class_id, method_id)}, got {got}")

    # -- set-up -----------------------------------------------------------

    def connect(self) -> None:
        """Open the socket, do the handshake and open a confirm channel."""
        self._sock = socket.create_connection(self._address, timeout=30)
        self._buffer = b""
        self._sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(_CONNECTION, 10)  # start
        self._method(
            0,
            _CONNECTION,
            11,  # start-ok
            table([])
            + shortstr(b"PLAIN")
            + longstr(b"\x00" + self.user + b"\x00" + self._password)
            + shortstr(b"en_US"),
        )
        tune = self._expect(_CONNECTION, 30)
        _channel_max, server_frame_max, _heartbeat = struct.unpack_from(">HIH", tune)
        if server_frame_max:
            self._frame_max = min(self._frame_max, server_frame_max)
        self._method(0, _CONNECTION, 31, struct.pack(">HIH", 16, self._frame_max, 0))
        self._method(
            0, _CONNECTION, 40, shortstr(self._vhost.encode()) + shortstr(b"") + b"\x00"
        )
        self._expect(_CONNECTION, 41)  # open-ok
        self._channel = 0
        self._open_channel()

    def _open_channel(self) -> None:
        self._channel = self._channel % 15 + 1
        self._method(self._channel, _CHANNEL, 10, shortstr(b""))
        self._expect(_CHANNEL, 11)
        self._method(self._channel, _CONFIRM, 10, b"\x00")
        self._expect(_CONFIRM, 11)
        self._seq = 0

    @property
    def frame_max(self) -> int:
        """The negotiated frame size limit."""
        return self._frame_max

    # -- publishing ---------------------------------------------------------

    def publish(
        self,
        ident: int,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        *,
        class_id: int = _BASIC,
        body_frame: int | None = None,
    ) -> None:
        """Send ``basic.publish`` (mandatory) with a hand-made property list.

        The body goes in frames of ``body_frame`` bytes (the largest allowed
        by default).
        """
        self._method(
            self._channel,
            _BASIC,
            40,
            b"\x00\x00"
            + shortstr(exchange.encode())
            + shortstr(routing_key.encode())
            + b"\x01",  # mandatory
        )
        header = struct.pack(">HHQ", class_id, 0, len(body)) + properties
        self._send(_HEADER, self._channel, header)
        step = min(body_frame or self._frame_max, self._frame_max - 8)
        for start in range(0, len(body), step):
            self._send(_BODY, self._channel, body[start : start + step])
        self._seq += 1
        self._in_flight[self._seq] = ident

    def sync(self) -> Verdicts:
        """Wait until every publish in flight is confirmed or refused."""
        while self._in_flight:
            kind, channel, payload = self._read_frame()
            if kind != _METHOD:
                continue
            class_id, method_id = struct.unpack_from(">HH", payload)
            if (class_id, method_id) == (_BASIC, 80):  # ack
                tag, multiple = struct.unpack_from(">QB", payload, 4)
                self._settle(tag, bool(multiple), None)
            elif (class_id, method_id) == (_BASIC, 120):  # nack
                tag, flags = struct.unpack_from(">QB", payload, 4)
                self._settle(tag, bool(flags & 1), "nacked")
            elif (class_id, method_id) == (_BASIC, 50):  # return: unroutable
                raise AssertionError("a test publish was unroutable")
            elif (class_id, method_id) == (_CHANNEL, 40):  # the broker closed it
                self._method(channel, _CHANNEL, 41, b"")
                self._refuse_all(_reply(payload))
                self._open_channel()
            elif (class_id, method_id) == (_CONNECTION, 50):
                self._method(0, _CONNECTION, 51, b"")
                self._refuse_all(_reply(payload))
                self.close()
                self.connect()
        verdicts = Verdicts(self._acked, self._refused)
        self._acked, self._refused = [], []
        return verdicts

    def _settle(self, tag: int, multiple: bool, refusal: str | None) -> None:
        tags = [t for t in self._in_flight if t <= tag] if multiple else [tag]
        for t in tags:
            ident = self._in_flight.pop(t)
            if refusal is None:
                self._acked.append(ident)
            else:
                self._refused.append((ident, refusal))

    def _refuse_all(self, reply: str) -> None:
        # Unconfirmed publishes on a closed channel were not taken: the broker
        # confirms only what it has routed.
        for ident in self._in_flight.values():
            self._refused.append((ident, reply))
        self._in_flight.clear()

    def close(self) -> None:
        """Drop the socket (the broker cleans up the channel)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RawAmqpPublisher:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reply(payload: bytes) -> str:
    code = struct.unpack_from(">H", payload, 4)[0]
    length = payload[6]
    return f"{code} {payload[7 : 7 + length].decode('utf-8', 'replace')}"
