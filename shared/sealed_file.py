"""Sealed files: the streaming envelope format of docs/file-format.md, over streams.

A sealed file is a small self-describing header (the master KeyId, the wrapped
data key exactly as KMS returned it, the canonical EncryptionContext, the
segment size, a salt and a nonce prefix) followed by fixed-size segments sealed
by :mod:`~envelope_mq.shared.segments`.
Memory stays constant: one segment buffer, whatever
the size of the file.

:func:`seal_stream` and :func:`unseal_stream` ask KMS for the data key;
:func:`seal_with_key` and :func:`unseal_with_key` take it in hand (the
benchmark and the vectors use those). Every reason a file cannot be opened
(bad magic, unknown version, malformed header, altered, dropped, duplicated,
reordered, truncated or appended segments) is the one :class:`DecryptionError`.
When KMS itself refuses to unwrap the data key (unknown or disabled key, a
wrapped key or context altered in the header), its :class:`KmsError` passes
through unchanged: that says something about the service, not the file.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from envelope_mq.shared.errors import DecryptionError, KeyMismatchError, SealingError
from envelope_mq.shared.kms import DataKey, KeyProvider, same_key
from envelope_mq.shared.segments import (
    NONCE_PREFIX_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    SegmentCipher,
    new_salt_and_prefix,
)
from envelope_mq.shared.wire import canonical_context, parse_context

if TYPE_CHECKING:  # collections.abc.Buffer is Python 3.12+
    from typing_extensions import Buffer

__all__ = [
    "ALGORITHM_ID",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "FileHeader",
    "Reader",
    "Writer",
    "read_header",
    "seal_stream",
    "seal_with_key",
    "unseal_stream",
    "unseal_with_key",
]

MAGIC = b"EMQSEAL\x00"
FORMAT_VERSION = 1
ALGORITHM_ID = 1  # AES-256-GCM segments under an HKDF-SHA256 file key
DEFAULT_SEGMENT_SIZE = 64 * 1024
MIN_SEGMENT_SIZE = 4 * 1024
# A reader allocates one segment: the bound keeps a hostile header from
# choosing how much memory unseal takes.
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_KEY_ID_BYTES = 1024
MAX_WRAPPED_KEY_BYTES = 4096
MAX_CONTEXT_BYTES = 16 * 1024

# magic, version, algorithm, segment size, salt, nonce prefix
_FIXED = struct.Struct(f">{len(MAGIC)}sBBI{SALT_SIZE}s{NONCE_PREFIX_SIZE}s")
_LENGTH = struct.Struct(">H")


class Reader(Protocol):
    """A blocking binary source: an ``open(..., "rb")`` file, a BytesIO..."""

    def readinto(self, buffer: Buffer, /) -> int | None:
        """Read into ``buffer``; return the count, 0 at the end."""
        ...


class Writer(Protocol):
    """A binary sink."""

    def write(self, data: Buffer, /) -> object:
        """Write all of ``data``."""
        ...


@dataclass(frozen=True)
class FileHeader:
    """The parsed header of a sealed file; ``encoded`` is its exact bytes."""

    key_id: str
    wrapped_key: str
    context: Mapping[str, str]
    segment_size: int
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    encoded: bytes = field(repr=False)


def _encode_header(
    key_id: str,
    wrapped_key: str,
    context_json: str,
    segment_size: int,
    salt: bytes,
    nonce_prefix: bytes,
) -> bytes:
    parts = [
        _FIXED.pack(
            MAGIC, FORMAT_VERSION, ALGORITHM_ID, segment_size, salt, nonce_prefix
        )
    ]
    for text, encoding, limit in (
        (key_id, "utf-8", MAX_KEY_ID_BYTES),
        (wrapped_key, "ascii", MAX_WRAPPED_KEY_BYTES),
        (context_json, "utf-8", MAX_CONTEXT_BYTES),
    ):
        # Never write what read_header refuses: a file nobody could open.
        try:
            value = text.encode(encoding)
        except UnicodeEncodeError as exc:
            raise SealingError("key id or wrapped key not encodable") from exc
        if not 0 < len(value) <= limit:
            raise SealingError("key id, wrapped key or context empty or too long")
        parts += [_LENGTH.pack(len(value)), value]
    return b"".join(parts)


def read_header(src: Reader) -> FileHeader:
    """Read and check the header at the start of ``src``; no KMS call.

    Raises:
        DecryptionError: not a sealed file of a version and algorithm we know,
            or a header field out of bounds or not in canonical form.
    """
    try:
        return _read_header(src)
    except (ValueError, struct.error) as exc:  # UnicodeDecodeError included
        raise DecryptionError() from exc


def _read_header(src: Reader) -> FileHeader:
    fixed = _read_exactly(src, _FIXED.size)
    magic, version, algorithm, segment_size, salt, prefix = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise ValueError("not a sealed file")
    if version != FORMAT_VERSION or algorithm != ALGORITHM_ID:
        raise ValueError("unsupported version or algorithm")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError("segment size out of bounds")
    raw = [fixed]
    values = []
    for limit in (MAX_KEY_ID_BYTES, MAX_WRAPPED_KEY_BYTES, MAX_CONTEXT_BYTES):
        length_bytes = _read_exactly(src, _LENGTH.size)
        (length,) = _LENGTH.unpack(length_bytes)
        if not 0 < length <= limit:
            raise ValueError("header field empty or too long")
        value = _read_exactly(src, length)
        raw += [length_bytes, value]
        values.append(value)
    context_json = values[2].decode("utf-8")
    return FileHeader(
        key_id=values[0].decode("utf-8"),
        wrapped_key=values[1].decode("ascii"),
        context=parse_context(context_json),  # canonical form only
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=prefix,
        encoded=b"".join(raw),
    )


def seal_stream(
    src: Reader,
    dst: Writer,
    provider: KeyProvider,
    key_id: str,
    context: Mapping[str, str] | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> FileHeader:
    """Seal all of ``src`` into ``dst`` under a fresh data key from KMS.

    Raises:
        SealingError: bad context or segment size; KmsError: KMS refused.
    """
    context = dict(context or {})
    # Refuse bad input before spending a KMS call on it.
    canonical_context(context)
    _check_segment_size(segment_size)
    data_key = provider.generate_data_key(key_id, context)
    return seal_with_key(src, dst, data_key, context, segment_size=segment_size)


def seal_with_key(
    src: Reader,
    dst: Writer,
    data_key: DataKey,
    context: Mapping[str, str] | None = None,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> FileHeader:
    """Seal all of ``src`` into ``dst`` with a data key already in hand."""
    salt, prefix = new_salt_and_prefix()
    return _seal_parts(src, dst, data_key, context or {}, segment_size, salt, prefix)


def _seal_parts(
    src: Reader,
    dst: Writer,
    data_key: DataKey,
    context: Mapping[str, str],
    segment_size: int,
    salt: bytes,
    nonce_prefix: bytes,
) -> FileHeader:
    """Seal with a given salt and nonce prefix: the seam for test vectors only."""
    _check_segment_size(segment_size)
    context_json = canonical_context(context)
    encoded = _encode_header(
        data_key.key_id,
        data_key.wrapped,
        context_json,
        segment_size,
        salt,
        nonce_prefix,
    )
    cipher = SegmentCipher(data_key.plaintext, salt, nonce_prefix, encoded)
    dst.write(encoded)
    buffer = bytearray(segment_size)
    view = memoryview(buffer)
    index = 0
    # A full segment is never the last: the last one holds 0 to size-1 bytes,
    # so the writer needs no look-ahead and every plaintext has one encoding.
    while (filled := _fill(src, view)) == segment_size:
        dst.write(cipher.seal(index, view, last=False))
        index += 1
    dst.write(cipher.seal(index, view[:filled], last=True))
    return FileHeader(
        key_id=data_key.key_id,
        wrapped_key=data_key.wrapped,
        context=dict(context),
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        encoded=encoded,
    )


def unseal_stream(
    src: Reader,
    dst: Writer,
    provider: KeyProvider,
    *,
    expected_context: Mapping[str, str] | None = None,
    expected_key_ids: Collection[str] | None = None,
) -> FileHeader:
    """Open a sealed file from ``src`` into ``dst``; KMS unwraps the data key.

    Plaintext is written segment by segment, each only once authenticated: on
    an error, ``dst`` may hold a prefix of the plaintext, so a caller writing
    to a file must discard it (the CLI writes to a temporary file).

    The master key that matters is the one KMS reports for the wrapped key,
    not the one the header names: a header naming another is refused
    (:class:`KeyMismatchError`), and so is a key not among
    ``expected_key_ids`` (KeyIds, as DescribeKey resolves them), both before
    any plaintext is written.

    Raises:
        DecryptionError: the file cannot be opened, its context is not
            ``expected_context``, or its key not one of ``expected_key_ids``;
        KeyMismatchError: the header names another key than KMS used;
        KmsError: KMS refused to unwrap the key.
    """
    header = read_header(src)
    if expected_context is not None and dict(expected_context) != header.context:
        raise DecryptionError() from ValueError("unexpected encryption context")
    unwrapped = provider.decrypt_data_key(header.wrapped_key, header.context)
    if not same_key(header.key_id, unwrapped.key_id):
        raise KeyMismatchError(header.key_id, unwrapped.key_id)
    if expected_key_ids is not None and unwrapped.key_id not in expected_key_ids:
        raise DecryptionError() from ValueError("not sealed under an expected key")
    unseal_with_key(src, dst, header, unwrapped.plaintext)
    return header


def unseal_with_key(src: Reader, dst: Writer, header: FileHeader, key: bytes) -> int:
    """Open the segments that follow ``header`` in ``src``; return the plaintext size.

    Raises:
        DecryptionError: a segment fails, is missing, or bytes follow the last.
    """
    try:
        cipher = SegmentCipher(key, header.salt, header.nonce_prefix, header.encoded)
    except ValueError as exc:  # not a 32-byte key
        raise DecryptionError() from exc
    sealed_size = header.segment_size + TAG_SIZE
    buffer = bytearray(sealed_size)
    view = memoryview(buffer)
    index = total = 0
    while True:
        filled = _fill(src, view)
        # Only the last segment is short; a full one is never the last.
        last = filled < sealed_size
        plaintext = cipher.open(index, view[:filled], last=last)
        dst.write(plaintext)
        total += len(plaintext)
        if last:
            return total
        index += 1


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise SealingError(
            f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}"
        )


def _fill(src: Reader, view: memoryview) -> int:
    """Read into ``view`` until it is full or ``src`` ends; return the count."""
    filled = 0
    size = len(view)
    while filled < size:
        count = src.readinto(view[filled:])
        if not count:  # 0 at the end; None would mean a non-blocking stream
            break
        filled += count
    return filled


def _read_exactly(src: Reader, size: int) -> bytes:
    data = bytearray(size)
    if _fill(src, memoryview(data)) != size:
        raise ValueError("file ends inside the header")
    return bytes(data)
