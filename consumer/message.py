"""The two values a delivery becomes: what the transport saw, what the handler gets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envelope_mq.shared.envelope import MessageMeta

__all__ = ["Delivery", "ReceivedMessage"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as the broker handed it over, still sealed; no pika types.

    ``raw`` is the transport's own handle on the delivery (opaque here): the
    transport needs it to acknowledge or quarantine the message. ``defects``
    names what of the content header could not be decoded (and was left out
    of the fields above): a delivery with defects is malformed.
    """

    body: bytes = field(repr=False)
    headers: Mapping[str, object]
    message_id: str | None
    timestamp: int | None
    content_type: str | None
    content_encoding: str | None
    type: str | None
    redelivered: bool
    delivery_tag: int
    raw: object = field(repr=False, compare=False, default=None)
    defects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A decrypted message, as the handler receives it.

    Only ``body``, ``properties`` and ``context`` are authenticated (bound into
    the GCM tag). ``headers`` are every AMQP header as delivered, the x-emq-*
    envelope included; any other header is unauthenticated and may have been
    changed in transit.
    """

    body: bytes = field(repr=False)
    properties: MessageMeta
    headers: Mapping[str, object] = field(repr=False)
    context: Mapping[str, str]
    key_id: str
    redelivered: bool = False

    @property
    def message_id(self) -> str:
        """The AMQP message_id (authenticated)."""
        return self.properties.message_id

    @property
    def timestamp(self) -> int:
        """The AMQP timestamp, seconds since the epoch (authenticated)."""
        return self.properties.timestamp

    @property
    def content_type(self) -> str | None:
        """The content type of the plaintext (authenticated)."""
        return self.properties.content_type

    @property
    def causation_id(self) -> str | None:
        """The message_id of the message this one was made from (authenticated).

        Set by a stage (``EncryptedStage``) on each output it hands on, from
        its input (wire format v2, header ``x-emq-cause``); None otherwise.
        Use it to trace a message back through a pipeline, or to de-duplicate
        by what it was made from.
        """
        return self.properties.causation_id
