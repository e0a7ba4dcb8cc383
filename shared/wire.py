"""Wire format v1: the x-emq-* headers, the body layout and the GCM associated data.

This is the byte-exact contract written down in docs/wire-format.md; keep the two
in step. Nothing here does I/O or cryptography. Received headers are checked
completely (names, types, sizes, canonical context) before anyone calls KMS, and
every reason to refuse them is the one :class:`MalformedMessageError`; the specific
reason is only chained as the cause, for debugging.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from envelope_mq.shared.crypto import NONCE_SIZE, OVERHEAD
from envelope_mq.shared.errors import MalformedMessageError, SealingError

__all__ = [
    "ALGORITHM",
    "ALG_HEADER",
    "CONTEXT_HEADER",
    "DATA_KEY_HEADER",
    "HEADER_NAMES",
    "KEY_ID_HEADER",
    "MAX_ENVELOPE_HEADER_BYTES",
    "MAX_SHORTSTR_BYTES",
    "NAMESPACE",
    "QUARANTINE_PREFIX",
    "VERSION",
    "VERSION_HEADER",
    "MessageAad",
    "ReceivedEnvelope",
    "canonical_context",
    "check_envelope",
    "envelope_header_size",
    "key_aad",
    "message_aad",
    "only_ours",
    "our_headers",
    "parse_context",
    "read_headers",
    "split_body",
]

VERSION = 1
ALGORITHM = "AES-256-GCM"

VERSION_HEADER = "x-emq-version"
ALG_HEADER = "x-emq-alg"
KEY_ID_HEADER = "x-emq-key-id"
DATA_KEY_HEADER = "x-emq-data-key"
CONTEXT_HEADER = "x-emq-context"
HEADER_NAMES = (
    VERSION_HEADER,
    ALG_HEADER,
    KEY_ID_HEADER,
    DATA_KEY_HEADER,
    CONTEXT_HEADER,
)

# Header names envelope-mq owns: "x-emq" and "x-emq-*". A reader refuses any
# of them its version does not define, except the quarantine copy's own
# x-emq-quarantine-* (never authenticated; quarantine and replay strip them).
NAMESPACE = "x-emq"
QUARANTINE_PREFIX = "x-emq-quarantine-"

# AMQP 0-9-1 does not fragment a header frame, and the crypto headers share it
# with everything else: cap ours well below the 128 KiB default frame_max.
MAX_ENVELOPE_HEADER_BYTES = 4096
# message_id, content_type, content_encoding and type are AMQP shortstr.
MAX_SHORTSTR_BYTES = 255
_U64_LIMIT = 1 << 64

# Names plus the fixed values (the int version counts as 8 bytes, an AMQP
# long-long); only the three variable strings are added per message.
_FIXED_HEADER_BYTES = sum(len(name) for name in HEADER_NAMES) + 8 + len(ALGORITHM)

_ABSENT = b"\x00"
_PRESENT = b"\x01"
_U64_FIELD = _PRESENT + (8).to_bytes(4, "big")


class ReceivedEnvelope(NamedTuple):
    """The three variable x-emq-* values of a received message, validated."""

    key_id: str
    wrapped_key: str
    context_json: str


# --- associated data ---------------------------------------------------------


def _field(value: bytes) -> bytes:
    return _PRESENT + len(value).to_bytes(4, "big") + value


def _optional_text(value: str | None, name: str) -> bytes:
    if value is None:
        return _ABSENT
    if type(value) is not str:
        raise ValueError(f"{name} must be a str or None")
    raw = value.encode("utf-8")  # UnicodeEncodeError is a ValueError
    if len(raw) > MAX_SHORTSTR_BYTES:
        raise ValueError(f"{name} exceeds {MAX_SHORTSTR_BYTES} bytes")
    return _PRESENT + len(raw).to_bytes(4, "big") + raw


def key_aad(key_id: str, wrapped_key: str, context_json: str) -> bytes:
    """Return the per-data-key half of the associated data (fields 1-5).

    It is the same for every message under one data key, so callers compute
    it once per key and append :func:`message_aad` per message.
    """
    return b"".join(
        (
            _U64_FIELD + VERSION.to_bytes(8, "big"),
            _field(ALGORITHM.encode("ascii")),
            _field(key_id.encode("utf-8")),
            _field(wrapped_key.encode("utf-8")),
            _field(context_json.encode("utf-8")),
        )
    )


def message_aad(
    message_id: str,
    timestamp: int,
    content_type: str | None,
    content_encoding: str | None,
    type_: str | None,
) -> bytes:
    """Return the per-message half of the associated data (fields 6-10).

    Raises:
        ValueError: a property has the wrong type, size or range (the recipe
            turns this into SealingError or DecryptionError).
    """
    # Built on every seal and open: the same bytes as _optional_text and the
    # u64 field would give, in fewer Python steps (see docs/performance.md).
    if message_id is None or message_id == "":
        # An empty id identifies nothing (de-duplication keys on it): refused
        # on both sides.
        raise ValueError("message_id is required and may not be empty")
    if type(message_id) is not str:
        raise ValueError("message_id must be a str or None")
    raw = message_id.encode("utf-8")  # UnicodeEncodeError is a ValueError
    size = len(raw)
    if size > MAX_SHORTSTR_BYTES:
        raise ValueError(f"message_id exceeds {MAX_SHORTSTR_BYTES} bytes")
    if type(timestamp) is not int or not 0 <= timestamp < _U64_LIMIT:
        raise ValueError("timestamp must be an int in [0, 2**64)")
    head = (_HEADS.get(size) or _head(size))(1, size, raw, 1, 8, timestamp)
    if content_type is None and content_encoding is None and type_ is None:
        return head + _THREE_ABSENT
    tail = None
    # Only exact str or None are ever remembered or looked up.
    if (
        (content_type is None or type(content_type) is str)
        and (content_encoding is None or type(content_encoding) is str)
        and (type_ is None or type(type_) is str)
    ):
        tail = _TAILS.get((content_type, content_encoding, type_))
    if tail is None:
        tail = _tail(content_type, content_encoding, type_)
    return head + tail


class MessageAad:
    """The whole associated data of the messages under one key, per message.

    ``prefix`` is the per-key part (:func:`key_aad`, or v2's fields 1-2) and
    ``suffix`` what follows field 10 when the message adds nothing after it
    (v2: the absent causation id). :meth:`build` gives exactly
    ``prefix + message_aad(...) + (suffix if extra is None else extra)``: the
    same bytes, with the same refusals, in far fewer Python steps. It runs
    twice per message (seal and open), so everything up to field 7 is written
    by one ``struct`` pack per message_id length (the prefix and field 6's
    marker and length baked into its first argument), and fields 8-10 (with
    the suffix) come from a memo. Nothing of one message is remembered: only
    the layout, and the fields that repeat from message to message.
    """

    __slots__ = ("_packs", "_prefix", "_suffix", "_tails")

    def __init__(self, prefix: bytes, suffix: bytes = b"") -> None:
        self._prefix = prefix
        self._suffix = suffix
        # By message_id length in bytes: a pack of (prefix ‖ field 6's marker
        # and length, message_id, field 7's marker and length, timestamp),
        # and its first argument.
        self._packs: dict[int, tuple[Callable[..., bytes], bytes]] = {}
        # Fields 8-10 ‖ suffix, by value (exact str or None only): the memo
        # of every key with this suffix, shared, so bounded once.
        self._tails = _TAILS_BY_SUFFIX.setdefault(suffix, {})

    def __repr__(self) -> str:
        return f"MessageAad(<{len(self._prefix)} bytes of key fields>)"

    def build(
        self,
        message_id: str,
        timestamp: int,
        content_type: str | None,
        content_encoding: str | None,
        type_: str | None,
        extra: bytes | None = None,
    ) -> bytes:
        """The associated data of one message; ``extra`` replaces the suffix.

        Raises:
            ValueError: as :func:`message_aad`.
        """
        # The common case in the fewest steps; anything unusual (a refusal
        # included) takes message_aad, the definition.
        if (
            type(message_id) is str
            and message_id
            and type(timestamp) is int
            and 0 <= timestamp < _U64_LIMIT
        ):
            # UTF-8, the default (cheaper than naming it); UnicodeEncodeError
            # is a ValueError.
            raw = message_id.encode()
            size = len(raw)
            # A str subclass could equal a remembered value and hash alike:
            # only exact str or None are ever looked up.
            if size <= MAX_SHORTSTR_BYTES and (
                (content_type is None or type(content_type) is str)
                and (content_encoding is None or type(content_encoding) is str)
                and (type_ is None or type(type_) is str)
            ):
                if extra is None:
                    # _tail_key, inlined.
                    tail = self._tails.get(
                        content_type
                        if content_encoding is None and type_ is None
                        else (content_type, content_encoding, type_)
                    )
                else:  # a causation id: the tail without the suffix
                    tail = _TAILS.get((content_type, content_encoding, type_))
                    if tail is not None:
                        tail += extra
                if tail is not None:
                    pack, head = self._packs.get(size) or self._pack(size)
                    return pack(head, raw, _U64_FIELD, timestamp) + tail
        own = message_aad(message_id, timestamp, content_type, content_encoding, type_)
        if extra is not None:
            return self._prefix + own + extra
        # message_aad checked every field: each is an exact str or None.
        tails = self._tails
        if len(tails) >= _MAX_TAILS:
            tails.clear()
        tail = _encode_tail(content_type, content_encoding, type_) + self._suffix
        tails[_tail_key(content_type, content_encoding, type_)] = tail
        return self._prefix + own + self._suffix

    def _pack(self, size: int) -> tuple[Callable[..., bytes], bytes]:
        packs = self._packs
        # Message ids of a sender come in a length or few; a flood of other
        # lengths must not grow a pack per length for each remembered key.
        if len(packs) >= _MAX_PACKS:
            packs.clear()
        head = self._prefix + _PRESENT + size.to_bytes(4, "big")
        pack = struct.Struct(f">{len(head)}s{size}s{len(_U64_FIELD)}sQ").pack
        packs[size] = pack, head
        return pack, head


_TailKey = str | None | tuple[str | None, str | None, str | None]


def _tail_key(
    content_type: str | None, content_encoding: str | None, type_: str | None
) -> _TailKey:
    # Most messages set content_type alone (or nothing): a str or None key is
    # cheaper to hash than a tuple, and never equal to one.
    if content_encoding is None and type_ is None:
        return content_type
    return (content_type, content_encoding, type_)


# Packers of fields 6 and 7 (message_id, timestamp) by message_id length.
_HEADS: dict[int, Callable[..., bytes]] = {}
_THREE_ABSENT = _ABSENT * 3
# Fields 8-10 by value: content types and the like repeat from message to
# message. Bounded: cleared when full.
_TAILS: dict[tuple[str | None, str | None, str | None], bytes] = {}
_MAX_TAILS = 256
# MessageAad's memos of fields 8-10 followed by a suffix, by suffix. Each
# bounded like _TAILS.
_TAILS_BY_SUFFIX: dict[bytes, dict[_TailKey, bytes]] = {}
# MessageAad's packs per key: one per message_id length in use.
_MAX_PACKS = 16


def _head(size: int) -> Callable[..., bytes]:
    pack = _HEADS[size] = struct.Struct(f">BI{size}sBIQ").pack
    return pack


def _encode_tail(
    content_type: str | None, content_encoding: str | None, type_: str | None
) -> bytes:
    """Fields 8-10. Raises ValueError."""
    return b"".join(
        (
            _optional_text(content_type, "content_type"),
            _optional_text(content_encoding, "content_encoding"),
            _optional_text(type_, "type"),
        )
    )


def _tail(
    content_type: str | None, content_encoding: str | None, type_: str | None
) -> bytes:
    tail = _encode_tail(content_type, content_encoding, type_)
    # Every value passed _optional_text: each is an exact str or None.
    if len(_TAILS) >= _MAX_TAILS:
        _TAILS.clear()
    _TAILS[content_type, content_encoding, type_] = tail
    return tail


# --- encryption context --------------------------------------------------------


def _dump_context(context: Mapping[str, str]) -> str:
    return json.dumps(
        context, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def canonical_context(context: object) -> str:
    """Return the canonical JSON of a sealing context (``{}`` when empty).

    Raises:
        SealingError: the context is not a mapping of str to str, or holds a
            string that is not valid Unicode (a lone surrogate).
    """
    if not isinstance(context, Mapping):
        raise SealingError("the encryption context must be a mapping of str to str")
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SealingError("the encryption context must map str to str")
    text = _dump_context(dict(context))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SealingError("the encryption context is not valid Unicode") from exc
    return text


def parse_context(context_json: str) -> dict[str, str]:
    """Parse a received x-emq-context that must already be canonical.

    Raises:
        ValueError: not a JSON object of str to str, or not in canonical form.
    """
    try:
        parsed = json.loads(context_json)
    except RecursionError as exc:
        raise ValueError("x-emq-context nests too deeply") from exc
    if not isinstance(parsed, dict) or not all(
        type(value) is str for value in parsed.values()
    ):
        raise ValueError("x-emq-context is not a JSON object of strings")
    # Re-encoding and comparing rejects whitespace, unsorted or duplicate keys,
    # needless escapes: one context has exactly one accepted spelling.
    if _dump_context(parsed) != context_json:
        raise ValueError("x-emq-context is not canonical JSON")
    return parsed


# --- headers -------------------------------------------------------------------


def envelope_header_size(key_id: str, wrapped_key: str, context_json: str) -> int:
    """Return the size the five x-emq-* headers count against the 4 KiB limit."""
    return (
        _FIXED_HEADER_BYTES
        + len(key_id.encode("utf-8"))
        + len(wrapped_key.encode("utf-8"))
        + len(context_json.encode("utf-8"))
    )


def read_headers(headers: object) -> ReceivedEnvelope:
    """Check names, types, version and algorithm: the cheap half of parsing.

    The caller must still :func:`check_envelope` the result, unless the very
    same values already passed it (a reader may remember those): the split
    lets :class:`shared.envelope.Opener` skip the costly half on a repeat.

    Raises:
        MalformedMessageError: a header missing, of the wrong type, or unsupported.
    """
    try:
        return _read_headers(headers)
    except ValueError as exc:
        raise MalformedMessageError() from exc


def check_envelope(received: ReceivedEnvelope) -> dict[str, str]:
    """Check the 4 KiB size limit and the canonical context; return the context.

    Raises:
        MalformedMessageError: the headers are too large or the context is not
            canonical JSON of str to str.
    """
    try:
        size = envelope_header_size(*received)
        if size > MAX_ENVELOPE_HEADER_BYTES:
            raise ValueError("x-emq-* headers exceed 4 KiB")
        return parse_context(received.context_json)
    except ValueError as exc:  # UnicodeEncodeError (lone surrogates) included
        raise MalformedMessageError() from exc


def _required_text(headers: Mapping[object, object], name: str) -> str:
    value = headers[name]
    if type(value) is not str:  # pika hands undecodable strings over as bytes
        raise ValueError(f"{name} is not a str")
    if not value:
        raise ValueError(f"{name} is empty")
    return value


def _read_headers(headers: object) -> ReceivedEnvelope:
    if not isinstance(headers, Mapping):
        raise ValueError("headers are not a mapping")
    missing = [name for name in HEADER_NAMES if name not in headers]
    if missing:
        raise ValueError(f"missing headers: {', '.join(missing)}")
    version = headers[VERSION_HEADER]
    # bool is an int subclass; and a header never chooses the algorithm. The
    # consumer's decoder (content_header.py) gives an int only for the AMQP
    # integer type codes, so a float or decimal 1 is refused here too.
    if type(version) is not int or version != VERSION:
        raise ValueError("unsupported x-emq-version")
    if type(headers[ALG_HEADER]) is not str or headers[ALG_HEADER] != ALGORITHM:
        raise ValueError("unsupported x-emq-alg")
    return ReceivedEnvelope(
        _required_text(headers, KEY_ID_HEADER),
        _required_text(headers, DATA_KEY_HEADER),
        _required_text(headers, CONTEXT_HEADER),
    )


def only_ours(headers: Iterable[object], allowed: frozenset[str]) -> bool:
    """Whether every envelope-mq name in ``headers`` is in ``allowed``.

    ``our_headers(headers) <= allowed`` without building a set: it runs on
    every message a consumer opens.
    """
    for name in headers:
        if name in allowed:
            continue
        if (
            isinstance(name, str)
            and name.startswith(NAMESPACE)
            and (name == NAMESPACE or name.startswith("x-emq-"))
            and not name.startswith(QUARANTINE_PREFIX)
        ):
            return False
    return True


def our_headers(headers: Iterable[object]) -> set[str]:
    """The names in ``headers`` that are envelope-mq's, quarantine ones aside."""
    return {
        name
        for name in headers
        if isinstance(name, str)
        and name.startswith(NAMESPACE)
        and (name == NAMESPACE or name.startswith("x-emq-"))
        and not name.startswith(QUARANTINE_PREFIX)
    }


# --- body ----------------------------------------------------------------------


def split_body(body: bytes) -> tuple[bytes, bytes]:
    """Split a body into (nonce, ciphertext ‖ tag).

    Raises:
        MalformedMessageError: the body is not bytes or shorter than nonce + tag.
    """
    if not isinstance(body, bytes) or len(body) < OVERHEAD:
        raise MalformedMessageError() from ValueError("body shorter than nonce + tag")
    return body[:NONCE_SIZE], body[NONCE_SIZE:]
