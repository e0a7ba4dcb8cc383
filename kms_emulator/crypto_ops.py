"""Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext) and ReEncrypt: the hot path.

No SQL and no JSON beyond the (cached) EncryptionContext parse run here: keys and
versions come from memory with their AES-GCM objects ready.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

from envelope_mq.kms_emulator.blob import open_blob, seal, split, undecryptable
from envelope_mq.kms_emulator.context import canonical_context
from envelope_mq.kms_emulator.errors import ApiError, invalid_parameter
from envelope_mq.kms_emulator.model import Key, KeyVersion
from envelope_mq.kms_emulator.params import optional, parse_int, required, utf8
from envelope_mq.kms_emulator.request import Call
from envelope_mq.kms_emulator.states import check_state

__all__ = ["HANDLERS", "MAX_PLAINTEXT_BYTES"]

MAX_PLAINTEXT_BYTES = 6144
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}


def _unsupported(reason: str) -> ApiError:
    return ApiError(
        400, "Rejected.UnsupportedOperation", f"Unsupported operation. {reason}"
    )


def _primary(key: Key) -> KeyVersion:
    version = key.primary
    if version is None:  # an EXTERNAL key whose material was never imported
        raise ApiError(
            409,
            "Rejected.PendingImport",
            "The request was rejected because the key state is PendingImport.",
        )
    return version


def _source(call: Call) -> tuple[Key, KeyVersion, bytes]:
    """The key and version a CiphertextBlob names, authorized and state-checked."""
    version_id, raw = split(required(call.params, "CiphertextBlob"))
    found = call.ring.version(version_id)
    if found is None:
        raise undecryptable()
    key, version = found
    call.authorize(key)
    check_state(call.action, key.state)
    return key, version, raw


def _unwrap(version: KeyVersion, raw: bytes, context: bytes) -> str:
    data = open_blob(version.aead, raw, context)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # only a forged blob under seeded material
        raise undecryptable() from exc


def encrypt(call: Call) -> dict[str, Any]:
    """Encrypt: the Plaintext string, sealed under the key's primary version."""
    key = call.key()
    data = utf8(required(call.params, "Plaintext"), "Plaintext")
    if len(data) > MAX_PLAINTEXT_BYTES:
        raise invalid_parameter("Plaintext", f"At most {MAX_PLAINTEXT_BYTES} bytes.")
    context = canonical_context(call.params.get("EncryptionContext"))
    call.dry_run()
    version = _primary(key)
    blob = seal(version.aead, version.version_id, data, context)
    return {
        "KeyId": key.key_id,
        "KeyVersionId": version.version_id,
        "CiphertextBlob": blob,
    }


def decrypt(call: Call) -> dict[str, Any]:
    """Decrypt: the key version comes from the blob; no KeyId is taken."""
    key, version, raw = _source(call)
    context = canonical_context(call.params.get("EncryptionContext"))
    if optional(call.params, "Recipient") is not None:
        raise _unsupported("Recipient (enclave attestation) is not emulated.")
    call.dry_run()
    return {
        "KeyId": key.key_id,
        "KeyVersionId": version.version_id,
        "Plaintext": _unwrap(version, raw, context),
    }


def _data_key_size(call: Call) -> int:
    spec = optional(call.params, "KeySpec")
    size = 32
    if spec is not None:
        if spec not in _DATA_KEY_SPECS:
            raise invalid_parameter("KeySpec", "Expected AES_256 or AES_128.")
        size = _DATA_KEY_SPECS[spec]
    # NumberOfBytes wins over KeySpec when both are given.
    return parse_int(call.params, "NumberOfBytes", size, 1, 1024)


def _generate(call: Call) -> tuple[dict[str, Any], str]:
    key = call.key()
    size = _data_key_size(call)
    context = canonical_context(call.params.get("EncryptionContext"))
    if optional(call.params, "Recipient") is not None:
        raise _unsupported("Recipient (enclave attestation) is not emulated.")
    call.dry_run()
    version = _primary(key)
    # The data key is wrapped as its base64 text, so Decrypt returns that text.
    plaintext = base64.b64encode(os.urandom(size)).decode("ascii")
    blob = seal(version.aead, version.version_id, plaintext.encode("ascii"), context)
    body = {
        "KeyId": key.key_id,
        "KeyVersionId": version.version_id,
        "CiphertextBlob": blob,
    }
    return body, plaintext


def generate_data_key(call: Call) -> dict[str, Any]:
    """GenerateDataKey: a fresh data key, in clear (base64) and wrapped."""
    body, plaintext = _generate(call)
    body["Plaintext"] = plaintext
    return body


def generate_data_key_without_plaintext(call: Call) -> dict[str, Any]:
    """GenerateDataKeyWithoutPlaintext: the wrapped data key only."""
    body, _ = _generate(call)
    return body


def re_encrypt(call: Call) -> dict[str, Any]:
    """ReEncrypt: Decrypt with the source context, Encrypt under the destination."""
    required(call.params, "DestinationKeyId")
    if optional(call.params, "SourceEncryptionAlgorithm") is not None:
        raise _unsupported("Asymmetric source ciphertexts are not emulated.")
    source, version, raw = _source(call)
    source_ref = optional(call.params, "SourceKeyId")
    if source_ref is not None and call.ring.find(source_ref) is not source:
        raise invalid_parameter("SourceKeyId", "It is not the key of the blob.")
    source_version = optional(call.params, "SourceKeyVersionId")
    if source_version is not None and source_version != version.version_id:
        raise invalid_parameter("SourceKeyVersionId", "It is not the blob's version.")
    source_context = canonical_context(
        call.params.get("SourceEncryptionContext"), "SourceEncryptionContext"
    )
    destination_context = canonical_context(
        call.params.get("DestinationEncryptionContext"), "DestinationEncryptionContext"
    )
    destination = call.key("DestinationKeyId")
    call.dry_run()
    plaintext = open_blob(version.aead, raw, source_context)
    target = _primary(destination)
    blob = seal(target.aead, target.version_id, plaintext, destination_context)
    return {
        "KeyId": destination.key_id,
        "KeyVersionId": target.version_id,
        "CiphertextBlob": blob,
    }


HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "Encrypt": encrypt,
    "Decrypt": decrypt,
    "GenerateDataKey": generate_data_key,
    "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "ReEncrypt": re_encrypt,
}
