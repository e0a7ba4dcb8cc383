"""Turn a sealed message into the AMQP payloads the transport will frame.

Done on the caller's thread, so that the I/O thread only frames and writes:
the ``basic.publish`` method payload of each destination is encoded once and
memoised, the content header once per message.
"""

from __future__ import annotations

from envelope_mq.producer import frames
from envelope_mq.producer.confirms import Outgoing
from envelope_mq.shared.envelope import SealedMessage
from envelope_mq.shared.errors import SealingError

__all__ = ["OutgoingEncoder"]

_Destination = tuple[str, str, bytes]  # exchange, routing key, method payload
# Distinct destinations remembered; beyond that they are encoded every time.
_MEMO_SIZE = 1024


class OutgoingEncoder:
    """Builds an :class:`Outgoing` per sealed message (any thread)."""

    def __init__(self) -> None:
        self._destinations: dict[tuple[str, str], _Destination] = {}

    def encode(
        self, exchange: str, routing_key: str, sealed: SealedMessage
    ) -> Outgoing:
        """The payloads of one message, with a fresh Future; raises SealingError."""
        meta = sealed.meta
        if type(sealed.body) is not bytes:
            # Checked here: a bad body found in the I/O thread would fail every
            # reconnect and re-publication after it.
            raise SealingError("a sealed body must be bytes")
        destination = self._destinations.get((exchange, routing_key))
        if destination is None:
            destination = self._destination(exchange, routing_key)
        header = frames.header_payload(
            len(sealed.body),
            sealed.headers,
            message_id=meta.message_id,
            timestamp=meta.timestamp,
            content_type=meta.content_type,
            content_encoding=meta.content_encoding,
            type=meta.type,
        )
        return Outgoing(destination, header, sealed.body, meta.message_id)

    def _destination(self, exchange: str, routing_key: str) -> _Destination:
        destination = (
            exchange,
            routing_key,
            frames.method_payload(exchange, routing_key),
        )
        if len(self._destinations) < _MEMO_SIZE:  # a bounded memo
            self._destinations[(exchange, routing_key)] = destination
        return destination
