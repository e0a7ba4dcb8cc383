"""Checks on KMS answers, whichever SDK brought them: a dict of the JSON body."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from envelope_mq.shared.errors import KmsRequestError, KmsUnavailableError
from envelope_mq.shared.kms.datakey import DATA_KEY_SIZE
from envelope_mq.shared.kms.failures import BAD_DATA_KEY, BAD_RESPONSE

__all__ = ["bad_response", "data_key", "data_key_text", "text_field"]


def text_field(body: Mapping[str, Any], name: str, action: str) -> str:
    """A non-empty string field of the answer."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise bad_response(action)
    return value


def data_key(body: Mapping[str, Any], action: str) -> bytes:
    """The answer's Plaintext: base64 of a 32-byte data key."""
    encoded = body.get("Plaintext")
    if not isinstance(encoded, str):
        raise bad_response(action)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad_data_key(action) from exc
    if len(key) != DATA_KEY_SIZE:
        raise _bad_data_key(action)
    return key


def data_key_text(key: bytes) -> str:
    """What Encrypt is given for another copy of a data key: its base64 text.

    GenerateDataKey wraps the key's base64 text (kms-api.md §7), so Decrypt
    of its blob answers that text; a copy made by Encrypt of the same text
    decrypts to the same answer, whichever copy a reader unwraps.
    """
    if len(key) != DATA_KEY_SIZE:
        raise ValueError(f"a data key is {DATA_KEY_SIZE} bytes")
    return base64.b64encode(key).decode("ascii")


def bad_response(action: str) -> KmsUnavailableError:
    """An answer that is not what the API documents (transient: a proxy's page)."""
    return KmsUnavailableError(
        f"KMS {action} failed: {BAD_RESPONSE}", code=BAD_RESPONSE
    )


def _bad_data_key(action: str) -> KmsRequestError:
    # Permanent: the wrapped blob holds something that is not an AES-256 key,
    # and asking again returns the same thing.
    return KmsRequestError(
        f"KMS {action} failed: {BAD_DATA_KEY}: not a {DATA_KEY_SIZE}-byte key",
        code=BAD_DATA_KEY,
    )
