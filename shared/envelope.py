"""The envelope recipe: seal and open messages in wire format v2 (or v1).

Producer and consumer call only this module. :class:`Sealer` draws every nonce
itself and never lets the caller choose one; :class:`Opener` refuses anything
malformed before it asks KMS for a key. Both keep the per-data-key work (the
``AESGCM`` object, the first half of the associated data) so that a message on
a cache hit costs little more than AES-GCM itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Protocol, TypeVar

from envelope_mq.shared import wire, wire_v2
from envelope_mq.shared.crypto import KEY_SIZE, NONCE_SIZE, OVERHEAD, Aes256Gcm
from envelope_mq.shared.errors import (
    DecryptionError,
    KeyMismatchError,
    MalformedMessageError,
    SealingError,
)
from envelope_mq.shared.keycache import (
    DataKeyCache,
    DataKeyLookup,
    UnwrapCache,
    UnwrapLookup,
)
from envelope_mq.shared.kms import DataKey, UnwrappedKey, WrappedCopy, same_key

__all__ = [
    "WIRE_VERSIONS",
    "DataKeySource",
    "EnvelopeHeader",
    "EnvelopeOpener",
    "KeyUnwrapper",
    "MessageMeta",
    "OpenedMessage",
    "Opener",
    "SealedMessage",
    "Sealer",
]

#: The wire formats this module seals and opens; producers write the last.
WIRE_VERSIONS = (1, 2)

# Bounds for the per-key memos: far more keys than a healthy process sees at
# once, small enough that a flood of distinct headers cannot grow memory.
_MAX_REMEMBERED = 1024

_K = TypeVar("_K")
_V = TypeVar("_V")


class DataKeySource(Protocol):
    """Hands out the current data key for (key id, context); DataKeyCache is one."""

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Return the data key to seal one more message with."""
        ...


class KeyUnwrapper(Protocol):
    """Turns a wrapped data key back into its plaintext; UnwrapCache is one."""

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        """Unwrap one of ``copies`` (its own choice and order).

        Returns the copy it used and what KMS said for it: the plaintext and
        the KeyId KMS reported. Raises the KmsError of the last copy tried.
        """
        ...


class EnvelopeOpener(Protocol):
    """What a consumer needs of :class:`Opener` (a timed wrapper is one too)."""

    def parse(self, headers: Mapping[str, object]) -> EnvelopeHeader:
        """Validate the x-emq-* headers; raise DecryptionError."""
        ...

    def open(
        self, body: bytes, header: EnvelopeHeader, meta: MessageMeta
    ) -> OpenedMessage:
        """Unwrap the data key and decrypt; raise DecryptionError or KmsError."""
        ...


@dataclass(frozen=True)
class MessageMeta:
    """The AMQP properties bound into the GCM associated data."""

    message_id: str
    timestamp: int  # seconds since the epoch (AMQP timestamp)
    content_type: str | None = None
    content_encoding: str | None = None
    type: str | None = None
    # The x-emq-cause header: the id of the message this one was caused by.
    # Only wire format v2 carries (and binds) it.
    causation_id: str | None = None


@dataclass(frozen=True)
class SealedMessage:
    """A sealed message: the body and envelope headers to publish with ``meta``.

    ``headers`` are v1's five x-emq-* headers, or v2's ``x-emq`` (bytes, AMQP
    type ``x``) and, when ``meta`` has a causation id, ``x-emq-cause``.
    """

    body: bytes  # nonce ‖ ciphertext ‖ tag
    headers: dict[str, str | int | bytes]
    meta: MessageMeta

    def __init__(
        self, body: bytes, headers: dict[str, str | int | bytes], meta: MessageMeta
    ) -> None:
        # One per message: filling the fields directly costs a third of the
        # frozen dataclass's generated __init__ (see docs/performance.md).
        fields = self.__dict__
        fields["body"] = body
        fields["headers"] = headers
        fields["meta"] = meta


@dataclass(frozen=True)
class EnvelopeHeader:
    """Parsed, validated x-emq-* headers of a received message (no KMS call yet).

    ``copies`` are the wrapped copies of the data key, the writer's primary
    first; ``key_id`` and ``wrapped_key`` are the first copy's (v1 has only
    one). Left empty, ``copies`` is that one copy, in the default region.
    ``version`` is the wire format: v1 binds key id, wrapped key and context;
    v2 binds its ``x-emq`` value, which holds the context and every copy.
    """

    key_id: str
    wrapped_key: str
    context: Mapping[str, str]
    copies: tuple[WrappedCopy, ...] = ()
    version: int = 1
    # The per-key half of the associated data, computed once per header.
    _aad: wire.MessageAad = field(init=False, repr=False, compare=False)
    # What an UnwrapCache finds the data key by, computed once per header.
    _unwrap: UnwrapLookup = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for value in (self.key_id, self.wrapped_key):
            if type(value) is not str or not value:
                raise MalformedMessageError() from ValueError(
                    "key id or data key missing"
                )
        if not self.copies:
            copies = (WrappedCopy("", self.key_id, self.wrapped_key),)
            object.__setattr__(self, "copies", copies)
        try:
            context_json = wire.canonical_context(self.context)
            if self.version == 2:
                # Re-encoding gives the received bytes back: decoding accepts
                # only the one encoding of each value.
                encoded = wire_v2.encode(context_json, self.copies)
                key_aad = wire_v2.key_aad(encoded)
            elif self.version == 1:
                key_aad = wire.key_aad(self.key_id, self.wrapped_key, context_json)
            else:
                raise ValueError("unknown wire version")
        except (SealingError, ValueError) as exc:
            raise MalformedMessageError() from exc
        # A read-only copy: the associated data above must stay true to it.
        object.__setattr__(self, "context", MappingProxyType(dict(self.context)))
        object.__setattr__(self, "_aad", _message_aads(key_aad, self.version))
        object.__setattr__(self, "_unwrap", UnwrapLookup(self.copies, self.context))


@dataclass(frozen=True)
class OpenedMessage:
    """An authenticated, decrypted message; the repr hides the plaintext.

    ``key_id`` is the master key KMS reported when it unwrapped the data key:
    the sender's identity as far as KMS vouches for it (the x-emq-key-id
    header only said the same thing, or the message was refused).
    """

    plaintext: bytes = field(repr=False)
    context: Mapping[str, str]
    key_id: str
    meta: MessageMeta

    def __init__(
        self,
        plaintext: bytes,
        context: Mapping[str, str],
        key_id: str,
        meta: MessageMeta,
    ) -> None:
        # One per message: see SealedMessage.__init__.
        fields = self.__dict__
        fields["plaintext"] = plaintext
        fields["context"] = context
        fields["key_id"] = key_id
        fields["meta"] = meta


_NO_CAUSE = wire_v2.cause_field(None)
# Builds the result objects of seal and open without an __init__ call.
_new_object = object.__new__


def _message_aads(key_aad: bytes, version: int) -> wire.MessageAad:
    """Builds the associated data of each message under one key.

    v1: fields 1-5 ‖ 6-10; v2: fields 1-2 ‖ 6-10 ‖ 11 (the causation id,
    absent unless :func:`_cause_field` gives it).
    """
    return wire.MessageAad(key_aad, _NO_CAUSE if version == 2 else b"")


def _build(aads: wire.MessageAad, meta: MessageMeta, extra: bytes | None) -> bytes:
    """The associated data of the message ``meta`` (``extra``: field 11)."""
    return aads.build(
        meta.message_id,
        meta.timestamp,
        meta.content_type,
        meta.content_encoding,
        meta.type,
        extra,
    )


def _cause_field(cause: str, version: int) -> bytes:
    """Field 11 for a message with a causation id. Raises ValueError."""
    if version != 2:
        raise ValueError("wire format v1 cannot carry a causation id")
    return wire_v2.cause_field(cause)


@dataclass(frozen=True)
class _SealingKey:
    """Everything derived from one data key, built once and reused per message."""

    data_key: DataKey = field(repr=False)
    cipher: Aes256Gcm = field(repr=False)
    aads: wire.MessageAad
    headers: dict[str, str | int | bytes]


class Sealer:
    """Seals messages under data keys of one master key and one context.

    ``wire_version`` 2 (the default) writes the one binary ``x-emq`` header
    with every wrapped copy of the data key; 1 writes v1's five headers and
    only the primary copy (v1 has room for one).
    """

    def __init__(
        self,
        cache: DataKeySource,
        key_id: str,
        context: Mapping[str, str] | None = None,
        *,
        wire_version: int = 2,
    ) -> None:
        if type(key_id) is not str or not key_id:
            raise SealingError("a master key id is required")
        if type(wire_version) is not int or wire_version not in WIRE_VERSIONS:
            raise SealingError(f"wire_version must be one of {WIRE_VERSIONS}")
        self._version = wire_version
        context = {} if context is None else context
        self._context_json = wire.canonical_context(context)
        self._context: Mapping[str, str] = MappingProxyType(dict(context))
        self._cache = cache
        self._key_id = key_id
        # The per-message question to the cache, asked the quickest way it
        # answers: a DataKeyCache (exactly: a subclass may answer otherwise)
        # by the cache key worked out once, any other source as it is.
        self._acquire: Callable[[], DataKey] = (
            partial(cache.acquire_by, DataKeyLookup(key_id, self._context))
            if type(cache) is DataKeyCache
            else partial(cache.acquire, key_id, self._context)
        )
        self._current: _SealingKey | None = None
        # Checks a message's properties while there is no key yet.
        self._unkeyed_aads = _message_aads(b"", wire_version)

    def __repr__(self) -> str:
        return (
            f"Sealer(key_id={self._key_id!r}, context={self._context_json}, "
            f"wire_version={self._version})"
        )

    @property
    def wire_version(self) -> int:
        """The wire format this sealer writes."""
        return self._version

    def seal(self, plaintext: bytes, meta: MessageMeta) -> SealedMessage:
        """Encrypt ``plaintext`` bound to ``meta``, under a fresh random nonce.

        v2 binds ``meta.causation_id`` and sends it as ``x-emq-cause``; v1
        has no room for it: sealing v1 with one is refused rather than
        dropping it unbound.

        Raises:
            SealingError: bad plaintext, properties or data key.
            KmsUnavailableError, KmsRequestError: no data key could be had.
        """
        # Random 96-bit nonces are safe for 2**32 messages per key (SP 800-38D);
        # the data key cache rotates keys long before that.
        return self._seal_with(plaintext, meta, os.urandom(NONCE_SIZE))

    def _seal_with(
        self, plaintext: bytes, meta: MessageMeta, nonce: bytes
    ) -> SealedMessage:
        """Seal with a given nonce: only for known-answer vectors, never in use."""
        if not isinstance(plaintext, bytes):
            raise SealingError("the plaintext must be bytes")
        cause = meta.causation_id
        current = self._current
        try:
            extra = None if cause is None else _cause_field(cause, self._version)
            # Built under the current key, which is nearly always the one
            # acquire() gives; built in any case, since that checks the
            # properties, and they must be checked before acquire() counts a
            # message against the key.
            aad = (self._unkeyed_aads if current is None else current.aads).build(
                meta.message_id,
                meta.timestamp,
                meta.content_type,
                meta.content_encoding,
                meta.type,
                extra,
            )
        except ValueError as exc:
            raise SealingError(f"invalid message properties: {exc}") from exc
        data_key = self._acquire()
        if current is None or current.data_key is not data_key:
            current = self._current = self._prepare(data_key)
            aad = _build(current.aads, meta, extra)
        sealed = current.cipher.seal(nonce, plaintext, aad)
        headers = current.headers.copy()  # the caller's to add to
        if cause is not None:
            headers[wire_v2.CAUSE_HEADER] = cause
        # SealedMessage(nonce + sealed, headers, meta), filled as its
        # __init__ does, without that call's frame: once per message.
        message = _new_object(SealedMessage)
        fields = message.__dict__
        fields["body"] = nonce + sealed
        fields["headers"] = headers
        fields["meta"] = meta
        return message

    def _prepare(self, data_key: DataKey) -> _SealingKey:
        key_id, wrapped = data_key.key_id, data_key.wrapped
        if type(data_key.plaintext) is not bytes or len(data_key.plaintext) != KEY_SIZE:
            raise SealingError(f"a data key must be {KEY_SIZE} bytes")
        if type(key_id) is not str or not key_id:
            raise SealingError("the data key has no master key id")
        if type(wrapped) is not str or not wrapped:
            raise SealingError("the data key has no wrapped form")
        if self._version == 2:
            return self._prepare_v2(data_key)
        # Never write what every reader must refuse.
        size = wire.envelope_header_size(key_id, wrapped, self._context_json)
        if size > wire.MAX_ENVELOPE_HEADER_BYTES:
            raise SealingError("the x-emq-* headers would exceed 4 KiB")
        return _SealingKey(
            data_key=data_key,
            cipher=Aes256Gcm(data_key.plaintext),
            aads=_message_aads(
                wire.key_aad(key_id, wrapped, self._context_json), self._version
            ),
            headers={
                wire.VERSION_HEADER: wire.VERSION,
                wire.ALG_HEADER: wire.ALGORITHM,
                wire.KEY_ID_HEADER: key_id,
                wire.DATA_KEY_HEADER: wrapped,
                wire.CONTEXT_HEADER: self._context_json,
            },
        )

    def _prepare_v2(self, data_key: DataKey) -> _SealingKey:
        copies = data_key.copies
        try:
            # Never write what every reader must refuse: encode() checks every
            # part (canonical base64 blobs, lengths, the 4 KiB budget).
            value = wire_v2.encode(self._context_json, copies)
        except ValueError as exc:
            raise SealingError(f"cannot write the x-emq header: {exc}") from exc
        return _SealingKey(
            data_key=data_key,
            cipher=Aes256Gcm(data_key.plaintext),
            aads=_message_aads(wire_v2.key_aad(value), self._version),
            headers={wire_v2.HEADER: value},
        )


# Header names each version defines; anything else in the x-emq namespace is
# refused (a mix of v1 and v2 headers included).
_V1_NAMES = frozenset(wire.HEADER_NAMES)
_V2_NAMES = frozenset((wire_v2.HEADER, wire_v2.CAUSE_HEADER))


def _refuse(reason: str) -> MalformedMessageError:
    error = MalformedMessageError()
    error.__cause__ = ValueError(reason)
    return error


class Opener:
    """Opens messages sealed by :class:`Sealer` (v1 and v2), unwrapping keys."""

    def __init__(self, cache: KeyUnwrapper) -> None:
        self._cache = cache
        # An UnwrapCache (exactly, as in Sealer) is asked by the header's
        # precomputed lookup; any other unwrapper by copies and context.
        self._by_lookup = cache if type(cache) is UnwrapCache else None
        self._lock = threading.Lock()  # guards the memos on a miss only
        self._headers: dict[wire.ReceivedEnvelope, EnvelopeHeader] = {}
        self._v2_headers: dict[bytes, EnvelopeHeader] = {}
        self._ciphers: dict[bytes, Aes256Gcm] = {}

    def __repr__(self) -> str:
        return f"Opener({self._cache!r})"

    def parse(self, headers: Mapping[str, object]) -> EnvelopeHeader:
        """Validate the envelope headers of a received message; no KMS call.

        ``x-emq`` present makes it v2, else v1. Any other header of the
        x-emq namespace than the version defines is refused (quarantine
        headers aside), so a mix of v1 and v2 headers never opens.

        Raises:
            MalformedMessageError: anything missing, mistyped, unsupported,
                unknown or too large.
        """
        if type(headers) is not dict and not isinstance(headers, Mapping):
            raise _refuse("headers are not a mapping")
        if wire_v2.HEADER in headers:
            if not wire.only_ours(headers, _V2_NAMES):
                raise _refuse("an x-emq-* header v2 does not define")
            if wire_v2.CAUSE_HEADER in headers:
                try:  # per message, so checked here and read by the caller
                    wire_v2.read_cause(headers)
                except ValueError as exc:
                    raise MalformedMessageError() from exc
            value = headers[wire_v2.HEADER]
            # _parse_v2's hit path, inlined: this runs once per message.
            header = self._v2_headers.get(value) if type(value) is bytes else None
            return self._parse_v2(value) if header is None else header
        if not wire.only_ours(headers, _V1_NAMES):
            raise _refuse("an x-emq-* header v1 does not define")
        received = wire.read_headers(headers)
        header = self._headers.get(received)
        if header is None:
            # Only values that passed every check are remembered, so a hit
            # needs no second look at size or context.
            context = wire.check_envelope(received)
            header = EnvelopeHeader(received.key_id, received.wrapped_key, context)
            self._remember(self._headers, received, header)
        return header

    def _parse_v2(self, value: object) -> EnvelopeHeader:
        if type(value) is bytearray:  # pamqp's type for "x"; unhashable
            value = bytes(value)
        header = self._v2_headers.get(value) if type(value) is bytes else None
        if header is None:
            try:
                decoded = wire_v2.decode(value)
            except ValueError as exc:
                raise MalformedMessageError() from exc
            first = decoded.copies[0]
            header = EnvelopeHeader(
                first.key_id, first.blob, decoded.context, decoded.copies, version=2
            )
            if type(value) is bytes:  # always: decode() refuses anything else
                self._remember(self._v2_headers, value, header)
        return header

    def open(
        self, body: bytes, header: EnvelopeHeader, meta: MessageMeta
    ) -> OpenedMessage:
        """Authenticate and decrypt ``body`` under exactly ``header`` and ``meta``.

        The header's key id is only a claim: whoever holds any master key can
        write any id there. The message is authenticated first, then the
        claim of the copy the unwrapper used is held against the KeyId KMS
        reported for it.

        Raises:
            MalformedMessageError: refused before any KMS call (a short body,
                an unusable bound property).
            DecryptionError: the message cannot be opened (always the same text).
            KeyMismatchError: it opened, but under another master key than
                x-emq-key-id names (a spoofed sender).
            KmsUnavailableError: KMS could not answer now; try again later.
            KmsRequestError: KMS refused to unwrap the data key.
        """
        if type(body) is bytes and len(body) >= OVERHEAD:
            # split_body's answer, inlined (once per message); anything
            # else takes it, for its refusal.
            nonce, sealed = body[:NONCE_SIZE], body[NONCE_SIZE:]
        else:
            nonce, sealed = wire.split_body(body)
        cause = meta.causation_id
        try:
            aad = header._aad.build(
                meta.message_id,
                meta.timestamp,
                meta.content_type,
                meta.content_encoding,
                meta.type,
                None if cause is None else _cause_field(cause, header.version),
            )
        except ValueError as exc:
            raise MalformedMessageError() from exc
        by_lookup = self._by_lookup
        used, unwrapped = (
            self._cache.unwrap_any(header.copies, header.context)
            if by_lookup is None
            else by_lookup.unwrap_by(header._unwrap)
        )
        key = unwrapped.plaintext
        # The type check keeps an unhashable "key" from escaping as TypeError.
        cipher = self._ciphers.get(key) if type(key) is bytes else None
        if cipher is None:
            cipher = self._cipher_for(key)
        plaintext = cipher.open(nonce, sealed, aad)
        claimed, verified = used.key_id, unwrapped.key_id
        # same_key's answer for equal names, without the call: every message
        # of a sender that names its key by KeyId.
        if (claimed != verified or not claimed) and not same_key(claimed, verified):
            raise KeyMismatchError(claimed, verified)
        # OpenedMessage(plaintext, header.context, unwrapped.key_id, meta),
        # filled as in seal.
        opened = _new_object(OpenedMessage)
        fields = opened.__dict__
        fields["plaintext"] = plaintext
        fields["context"] = header.context
        fields["key_id"] = verified
        fields["meta"] = meta
        return opened

    def _cipher_for(self, key: bytes) -> Aes256Gcm:
        if type(key) is not bytes or len(key) != KEY_SIZE:
            raise DecryptionError() from ValueError("unwrapped key is not 32 bytes")
        cipher = Aes256Gcm(key)
        self._remember(self._ciphers, key, cipher)
        return cipher

    def _remember(self, memo: dict[_K, _V], key: _K, value: _V) -> None:
        with self._lock:
            if len(memo) >= _MAX_REMEMBERED:
                del memo[next(iter(memo))]  # the oldest entry
            memo[key] = value
