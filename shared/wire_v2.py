"""Wire format v2: the one binary ``x-emq`` header and its associated data.

The byte-exact contract is docs/wire-format.md §11; keep the two in step. v2
moves everything v1 spread over five headers into one AMQP byte array (type
``x``), because each header-table entry costs the broker more than its bytes:

    version u8 = 2 ‖ alg u8 = 1 ‖ u16 len ‖ context (canonical JSON, "{}" if empty)
    ‖ count u8 (1..8) ‖ count * (u8 len ‖ region ‖ u8 len ‖ key id ‖ u16 len ‖ blob)

(lengths unsigned big-endian; ``blob`` is the base64-decoded CiphertextBlob).
Every value has exactly one encoding: decoding re-encodes and compares. The
optional ``x-emq-cause`` header (a causation id) is bound too. Nothing here
does I/O or cryptography; every refusal is a ValueError, which the recipe
turns into MalformedMessageError or SealingError.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from envelope_mq.shared.kms.datakey import WrappedCopy
from envelope_mq.shared.wire import DATA_KEY_HEADER, MAX_SHORTSTR_BYTES, parse_context

__all__ = [
    "ALG_AES_256_GCM",
    "CAUSE_HEADER",
    "HEADER",
    "MAX_COPIES",
    "MAX_VALUE_BYTES",
    "VERSION",
    "DecodedHeader",
    "blob_bytes",
    "cause_field",
    "data_key_token",
    "decode",
    "encode",
    "key_aad",
    "read_cause",
]

VERSION = 2
ALG_AES_256_GCM = 1
HEADER = "x-emq"
CAUSE_HEADER = "x-emq-cause"
MAX_COPIES = 8
# The budget counts the value only; the table entry adds 11 bytes (name
# length, the 5-byte name, type code "x", 4-byte length).
MAX_VALUE_BYTES = 4096

_PRESENT = b"\x01"
_ABSENT = b"\x00"


class DecodedHeader(NamedTuple):
    """A validated ``x-emq`` value taken apart."""

    context_json: str
    context: dict[str, str]
    copies: tuple[WrappedCopy, ...]


def _short(text: str, what: str, *, empty: bool) -> bytes:
    if type(text) is not str:
        raise ValueError(f"{what} is not a str")
    raw = text.encode("utf-8")  # UnicodeEncodeError is a ValueError
    if len(raw) > 255 or (not raw and not empty):
        raise ValueError(f"{what} must be {0 if empty else 1}..255 bytes of UTF-8")
    return len(raw).to_bytes(1, "big") + raw


def blob_bytes(blob: str) -> bytes:
    """The raw bytes of a CiphertextBlob, which must be canonical base64.

    Raises:
        ValueError: not standard base64 with padding, or not its one spelling.
    """
    if type(blob) is not str or not blob:
        raise ValueError("the wrapped key is empty")
    try:
        raw = base64.b64decode(blob.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError("the wrapped key is not base64") from exc
    # A reader re-encodes these bytes for Decrypt: only the one spelling
    # that comes back the same may be written.
    if base64.b64encode(raw).decode("ascii") != blob:
        raise ValueError("the wrapped key is not canonical base64")
    return raw


def encode(context_json: str, copies: Sequence[WrappedCopy]) -> bytes:
    """The ``x-emq`` value for one data key (its copies, primary first).

    Raises:
        ValueError: a part out of range, a blob not canonical base64, or the
            whole over :data:`MAX_VALUE_BYTES`.
    """
    context = context_json.encode("utf-8")
    if not context or len(context) > 0xFFFF:
        raise ValueError("the context must be 1..65535 bytes")
    if not 1 <= len(copies) <= MAX_COPIES:
        raise ValueError(f"a data key travels in 1..{MAX_COPIES} wrapped copies")
    parts = [
        bytes((VERSION, ALG_AES_256_GCM)),
        len(context).to_bytes(2, "big"),
        context,
        len(copies).to_bytes(1, "big"),
    ]
    for copy in copies:
        raw = blob_bytes(copy.blob)
        if len(raw) > 0xFFFF:
            raise ValueError("a wrapped key exceeds 65535 bytes")
        parts += (
            _short(copy.region, "a region label", empty=True),
            _short(copy.key_id, "a key id", empty=False),
            len(raw).to_bytes(2, "big"),
            raw,
        )
    value = b"".join(parts)
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"the x-emq header exceeds {MAX_VALUE_BYTES} bytes")
    return value


class _Reader:
    """Reads a byte string front to back; running past its end is a ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.data):
            raise ValueError("the x-emq header is truncated")
        chunk, self.at = self.data[self.at : end], end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def text(self, size_bytes: int, what: str) -> str:
        raw = self.take(self.number(size_bytes))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8") from exc


def decode(value: object) -> DecodedHeader:
    """Take a received ``x-emq`` value apart, checking every byte.

    Raises:
        ValueError: not bytes, over the budget, an unknown version or
            algorithm, a count out of range, an empty key id or blob, text
            that is not UTF-8, a context that is not canonical JSON, or bytes
            left over.
    """
    # An AMQP "x" byte array: bytes from pika and our decoder, a bytearray
    # from pamqp (the asyncio consumer, FastStream). A long string is refused.
    if type(value) is bytearray:
        value = bytes(value)
    if type(value) is not bytes:
        raise ValueError("x-emq is not a byte array")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"x-emq exceeds {MAX_VALUE_BYTES} bytes")
    reader = _Reader(value)
    if reader.number(1) != VERSION or reader.number(1) != ALG_AES_256_GCM:
        raise ValueError("unsupported x-emq version or algorithm")
    context_json = reader.text(2, "the context")
    context = parse_context(context_json)  # canonical, "{}" when empty
    count = reader.number(1)
    if not 1 <= count <= MAX_COPIES:
        raise ValueError(f"x-emq must carry 1..{MAX_COPIES} wrapped copies")
    copies = []
    for _ in range(count):
        region = reader.text(1, "a region label")
        key_id = reader.text(1, "a key id")
        raw = reader.take(reader.number(2))
        if not key_id or not raw:
            raise ValueError("a copy without key id or wrapped key")
        blob = base64.b64encode(raw).decode("ascii")
        copies.append(WrappedCopy(region, key_id, blob))
    if reader.at != len(value):
        raise ValueError("bytes after the last copy of x-emq")
    return DecodedHeader(context_json, context, tuple(copies))


def data_key_token(headers: Mapping[str, object]) -> object:
    """What tells one data key from another in received headers (v2 or v1).

    v2's ``x-emq`` value (one per data key and context), else v1's
    ``x-emq-data-key``; None when neither is there. For counting keys only.
    """
    if HEADER in headers:
        return headers[HEADER]
    return headers.get(DATA_KEY_HEADER)


def read_cause(headers: Mapping[str, object]) -> str | None:
    """The ``x-emq-cause`` header of a received v2 message, or None.

    Raises:
        ValueError: present but not a non-empty string of at most 255 bytes.
    """
    if CAUSE_HEADER not in headers:
        return None
    cause = headers[CAUSE_HEADER]
    if cause is None:  # an AMQP void "V" is present, not absent
        raise ValueError("x-emq-cause is void")
    cause_field(cause)
    return cause  # type: ignore[return-value]  # cause_field checked it is a str


def cause_field(cause: object) -> bytes:
    """AAD field 11: the causation id, absent or present.

    Raises:
        ValueError: not None, nor a non-empty str of at most 255 UTF-8 bytes.
    """
    if cause is None:
        return _ABSENT
    if type(cause) is not str:  # pika hands a non-UTF-8 long string as bytes
        raise ValueError("x-emq-cause is not a str")
    raw = cause.encode("utf-8")
    if not raw or len(raw) > MAX_SHORTSTR_BYTES:
        raise ValueError(f"x-emq-cause must be 1..{MAX_SHORTSTR_BYTES} bytes")
    return _PRESENT + len(raw).to_bytes(4, "big") + raw


def key_aad(value: bytes) -> bytes:
    """Fields 1 and 2 of the v2 associated data: version 2, the x-emq value."""
    return b"".join(
        (
            _PRESENT + (8).to_bytes(4, "big") + VERSION.to_bytes(8, "big"),
            _PRESENT + len(value).to_bytes(4, "big"),
            value,
        )
    )
