"""The self-contained framing of a sealed Celery payload (docs/celery.md).

A kombu serializer sees the body only: it cannot set the AMQP headers and
properties wire format v1 puts the envelope in. So the body carries them::

    frame = "EMQC" ‖ length (4 bytes, unsigned big-endian) ‖ header ‖ sealed

``header`` is a JSON object with the envelope headers (v1's five x-emq-*
headers, §3; or v2's ``x-emq`` as standard base64 text, since JSON has no
bytes, §11) and the five bound properties of §5 (``message_id``,
``timestamp``, ``content_type``, ``content_encoding``, ``type``); ``sealed``
is the body (nonce ‖ ciphertext ‖ tag). Everything in the header is bound
into the GCM associated data exactly as for any message of its version, so
changing a byte of it makes the message undecryptable. This module does no
crypto and no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from envelope_mq.shared.envelope import MessageMeta, SealedMessage
from envelope_mq.shared.errors import DecryptionError
from envelope_mq.shared.wire_v2 import HEADER as V2_HEADER

__all__ = ["MAGIC", "MAX_HEADER", "Frame", "frame", "unframe"]

MAGIC = b"EMQC"
# Four times the v1 header limit (§6): room for the bound properties, and
# small enough that a hostile length cannot make a reader allocate much.
MAX_HEADER = 16384
_LENGTH = 4
_PROPERTIES = ("message_id", "timestamp", "content_type", "content_encoding", "type")


@dataclass(frozen=True)
class Frame:
    """A framed message taken apart (nothing checked beyond its shape)."""

    headers: Mapping[str, object]  # the x-emq-* headers, as Opener.parse takes them
    meta: MessageMeta
    body: bytes = field(repr=False)


def frame(sealed: SealedMessage) -> bytes:
    """The body a sealed message travels in."""
    meta = sealed.meta
    header: dict[str, object] = dict(sealed.headers)
    value = header.get(V2_HEADER)
    if isinstance(value, bytes):
        header[V2_HEADER] = base64.b64encode(value).decode("ascii")
    header.update({name: getattr(meta, name) for name in _PROPERTIES})
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + len(encoded).to_bytes(_LENGTH, "big") + encoded + sealed.body


def _refuse(why: str) -> DecryptionError:
    # One error text for every refusal (wire format §7); the reason is chained.
    error = DecryptionError()
    error.__cause__ = ValueError(why)
    return error


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _refuse("duplicate member in the frame header")
    return result


def _v2_value(text: object) -> bytes:
    """The x-emq bytes of a frame: canonical standard base64, nothing else."""
    if not isinstance(text, str):
        raise _refuse("x-emq is not base64 text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise _refuse("x-emq is not base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise _refuse("x-emq is not canonical base64")
    return raw


def unframe(data: bytes) -> Frame:
    """Take a frame apart; raise DecryptionError when it is not one."""
    view = bytes(data)
    start = len(MAGIC) + _LENGTH
    if len(view) < start or view[: len(MAGIC)] != MAGIC:
        raise _refuse("not an envelope-mq frame")
    length = int.from_bytes(view[len(MAGIC) : start], "big")
    if length > MAX_HEADER or len(view) < start + length:
        raise _refuse("frame header too long or truncated")
    try:
        header = json.loads(
            view[start : start + length], object_pairs_hook=_no_duplicates
        )
    except (ValueError, RecursionError) as exc:
        raise _refuse("frame header is not JSON") from exc
    if not isinstance(header, dict):
        raise _refuse("frame header is not an object")
    message_id, timestamp = (
        header.pop("message_id", None),
        header.pop("timestamp", None),
    )
    optional = [header.pop(name, None) for name in _PROPERTIES[2:]]
    if type(message_id) is not str or type(timestamp) is not int or timestamp < 0:
        raise _refuse("message_id or timestamp missing")
    if any(value is not None and type(value) is not str for value in optional):
        raise _refuse("a bound property is not a string")
    content_type, content_encoding, type_ = optional
    if V2_HEADER in header:
        header[V2_HEADER] = _v2_value(header[V2_HEADER])
    meta = MessageMeta(message_id, timestamp, content_type, content_encoding, type_)
    return Frame(header, meta, view[start + length :])
