"""EncryptionContext: parsing and the canonical associated data it becomes.

The context is a JSON object of strings matched by meaning, so it is reduced to a
canonical byte string: the sorted pairs, each key and value UTF-8 encoded and
prefixed with its 4-byte big-endian length. Length prefixes keep the encoding
unambiguous ({"ab": "c"} and {"a": "bc"} differ), unlike the plain ``k+v``
concatenation of local-kms, LocalStack and moto.
"""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError, invalid_parameter

__all__ = ["MAX_CONTEXT_CHARS", "canonical_context"]

MAX_CONTEXT_CHARS = 8192
_EMPTY = b""


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a member name, so its meaning is ambiguous."""


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError
    return result


def _encode(text: str) -> bytes:
    # surrogatepass: a lone "\ud800" escape is legal JSON and must still encode
    # to one fixed byte string rather than fail.
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data


def _canonical(raw: str, name: str) -> bytes | ApiError:
    # Returning (not raising) the error lets lru_cache remember bad inputs too.
    if len(raw) > MAX_CONTEXT_CHARS:
        return invalid_parameter(name, f"At most {MAX_CONTEXT_CHARS} characters.")
    try:
        value = json.loads(raw, object_pairs_hook=_pairs_without_duplicates)
    except (ValueError, RecursionError):
        return invalid_parameter(name, "Expected a JSON object of strings.")
    if not isinstance(value, dict):
        return invalid_parameter(name, "Expected a JSON object of strings.")
    if not all(isinstance(item, str) for item in value.values()):
        return invalid_parameter(name, "Every value must be a string.")
    return b"".join(_encode(k) + _encode(value[k]) for k in sorted(value))


# Contexts repeat (a producer reuses one per stream), so parsing is cached; only
# short ones, to bound the cache's memory whatever callers send.
_cached = functools.lru_cache(maxsize=4096)(_canonical)
_CACHED_CHARS = 512


def canonical_context(raw: str | None, name: str = "EncryptionContext") -> bytes:
    """The canonical bytes of a context parameter; absent or empty means {}."""
    if not raw:
        return _EMPTY
    parse = _cached if len(raw) <= _CACHED_CHARS else _canonical
    result = parse(raw, name)
    if isinstance(result, ApiError):
        # A fresh copy: a cached exception instance would accumulate tracebacks.
        raise ApiError(result.status, result.code, result.message)
    return result
