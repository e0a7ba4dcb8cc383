from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from envelope_mq.shared.crypto import Aes256Gcm
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import DecryptionError, MalformedMessageError
from envelope_mq.shared.kms import DataKey, UnwrappedKey, WrappedCopy, local_copy

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
AES = json.loads((VECTORS / "aes256gcm.json").read_text(encoding="utf-8"))["vectors"]
ENVELOPE = json.loads((VECTORS / "envelope_v1.json").read_text(encoding="utf-8"))
POSITIVE = [v for v in ENVELOPE["vectors"] if not v["fail"]]
NEGATIVE = [v for v in ENVELOPE["vectors"] if v["fail"]]


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


class OneKey:
    """Both collaborators at once: a KMS that knows one data key; counts unwraps."""

    def __init__(self, data_key: DataKey) -> None:
        self.data_key = data_key
        self.unwraps = 0

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.data_key

    def unwrap(self, wrapped: str, context: Mapping[str, str]) -> UnwrappedKey:
        self.unwraps += 1
        return UnwrappedKey(self.data_key.plaintext, self.data_key.key_id)

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        copy = local_copy(copies)
        return copy, self.unwrap(copy.blob, context)


def _header_value(value: Any) -> object:
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return bytes.fromhex(value["bytes"])
    return value


def _meta(properties: Mapping[str, Any]) -> MessageMeta:
    return MessageMeta(**properties)


def _spec_aad(vector: Mapping[str, Any]) -> bytes:
    """The AAD built straight from docs/wire-format.md §5, not from shared.wire."""

    def field(value: bytes | None) -> bytes:
        return (
            b"\x00"
            if value is None
            else b"\x01" + struct.pack(">I", len(value)) + value
        )

    def text(value: str | None) -> bytes | None:
        return None if value is None else value.encode("utf-8")

    headers, props = vector["headers"], vector["properties"]
    return b"".join(
        [
            field(struct.pack(">Q", 1)),
            field(b"AES-256-GCM"),
            field(text(headers["x-emq-key-id"])),
            field(text(headers["x-emq-data-key"])),
            field(text(headers["x-emq-context"])),
            field(text(props["message_id"])),
            field(struct.pack(">Q", props["timestamp"])),
            field(text(props["content_type"])),
            field(text(props["content_encoding"])),
            field(text(props["type"])),
        ]
    )


# --- AES-256-GCM known answers -----------------------------------------------------


@pytest.mark.parametrize("vector", AES, ids=_ids(AES))
def test_aes256gcm_known_answers(vector: dict[str, str]) -> None:
    key, iv, aad = (bytes.fromhex(vector[k]) for k in ("key", "iv", "aad"))
    sealed = bytes.fromhex(vector["ct"] + vector["tag"])
    cipher = Aes256Gcm(key)
    if vector["fail"]:
        with pytest.raises(DecryptionError):
            cipher.open(iv, sealed, aad)
        return
    plaintext = bytes.fromhex(vector["pt"])
    assert cipher.seal(iv, plaintext, aad) == sealed
    assert cipher.open(iv, sealed, aad) == plaintext


def test_known_answers_include_nist_cases_that_pass_and_fail() -> None:
    nist = [v for v in AES if v["name"].startswith("gcm")]
    assert {v["fail"] for v in nist} == {True, False}
    assert any(v["aad"] and not v["fail"] for v in nist)


# --- envelope v1: positive vectors --------------------------------------------------


def _data_key(vector: Mapping[str, Any]) -> DataKey:
    return DataKey(
        plaintext=bytes.fromhex(vector["data_key"]),
        wrapped=vector["headers"]["x-emq-data-key"],
        key_id=vector["headers"]["x-emq-key-id"],
    )


@pytest.mark.parametrize("vector", POSITIVE, ids=_ids(POSITIVE))
def test_sealing_reproduces_the_vector(vector: dict[str, Any]) -> None:
    keys = OneKey(_data_key(vector))
    sealer = Sealer(
        keys, vector["headers"]["x-emq-key-id"], vector["context"], wire_version=1
    )
    sealed = sealer._seal_with(
        bytes.fromhex(vector["plaintext"]),
        _meta(vector["properties"]),
        nonce=bytes.fromhex(vector["nonce"]),
    )
    assert sealed.headers == vector["headers"]
    assert sealed.body.hex() == vector["body"]


@pytest.mark.parametrize("vector", POSITIVE, ids=_ids(POSITIVE))
def test_vector_follows_the_written_spec(vector: dict[str, Any]) -> None:
    aad = _spec_aad(vector)
    assert aad.hex() == vector["aad"]
    body = bytes.fromhex(vector["body"])
    nonce = bytes.fromhex(vector["nonce"])
    expected = AESGCM(bytes.fromhex(vector["data_key"])).encrypt(
        nonce, bytes.fromhex(vector["plaintext"]), aad
    )
    assert body == nonce + expected


@pytest.mark.parametrize("vector", POSITIVE, ids=_ids(POSITIVE))
def test_opening_the_vector_gives_its_plaintext_and_context(
    vector: dict[str, Any],
) -> None:
    opener = Opener(OneKey(_data_key(vector)))
    header = opener.parse(vector["headers"])
    opened = opener.open(
        bytes.fromhex(vector["body"]), header, _meta(vector["properties"])
    )
    assert opened.plaintext.hex() == vector["plaintext"]
    assert dict(opened.context) == vector["context"]


# --- envelope v1: negative vectors --------------------------------------------------


def _parse_and_open(opener: Opener, vector: Mapping[str, Any]) -> bytes:
    headers = {name: _header_value(v) for name, v in vector["headers"].items()}
    header = opener.parse(headers)
    body = bytes.fromhex(vector["body"])
    return opener.open(body, header, _meta(vector["properties"])).plaintext


@pytest.mark.parametrize("vector", NEGATIVE, ids=_ids(NEGATIVE))
def test_negative_vector_fails_with_the_one_decryption_error(
    vector: dict[str, Any],
) -> None:
    kms = OneKey(
        DataKey(plaintext=bytes.fromhex(vector["data_key"]), wrapped="-", key_id="-")
    )
    with pytest.raises(DecryptionError) as caught:
        _parse_and_open(Opener(kms), vector)
    assert str(caught.value) == DecryptionError.MESSAGE
    assert caught.value.args == (DecryptionError.MESSAGE,)
    # The refusal happened where the vector says: headers and properties first,
    # the tag only after the key came back.
    assert kms.unwraps == (0 if vector["before_kms"] else 1)
    # ... and is told apart by its class: malformed exactly when before KMS
    assert isinstance(caught.value, MalformedMessageError) == vector["before_kms"]


def test_negative_vectors_cover_every_kind_of_refusal() -> None:
    names = " ".join(v["name"] for v in NEGATIVE)
    for kind in ("tag", "nonce", "27 bytes", "version", "algorithm", "bytes", "4 KiB"):
        assert kind in names
    assert len(NEGATIVE) >= 40
    assert {v["before_kms"] for v in NEGATIVE} == {True, False}


def test_vector_file_is_what_the_generator_writes() -> None:
    path = VECTORS / "generate_envelope_v1.py"
    spec = importlib.util.spec_from_file_location("generate_envelope_v1", path)
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (VECTORS / "envelope_v1.json").read_text(encoding="utf-8") == (
        generator.render()
    )
