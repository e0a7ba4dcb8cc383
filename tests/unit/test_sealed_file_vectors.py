"""tests/vectors/file_v1.json: our sealed files match the documented format."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.shared.errors import DecryptionError
from envelope_mq.shared.kms import DataKey
from envelope_mq.shared.sealed_file import _seal_parts, read_header, unseal_with_key
from envelope_mq.shared.segments import TAG_SIZE, derive_file_key, header_digest

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
FILE = json.loads((VECTORS / "file_v1.json").read_text(encoding="utf-8"))
POSITIVE: list[dict[str, Any]] = FILE["vectors"]
NEGATIVE: list[dict[str, Any]] = FILE["negative"]
BY_NAME = {v["name"]: v for v in POSITIVE}


def plaintext(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


@pytest.mark.parametrize("vector", POSITIVE, ids=ids(POSITIVE))
def test_sealing_gives_exactly_the_vector(vector: dict[str, Any]) -> None:
    key = DataKey(
        plaintext=bytes.fromhex(vector["data_key"]),
        wrapped=vector["wrapped_key"],
        key_id=vector["key_id"],
    )
    out = io.BytesIO()
    header = _seal_parts(
        io.BytesIO(plaintext(vector["plaintext_length"])),
        out,
        key,
        vector["context"],
        vector["segment_size"],
        bytes.fromhex(vector["salt"]),
        bytes.fromhex(vector["nonce_prefix"]),
    )
    assert header.encoded.hex() == vector["header"]
    assert header_digest(header.encoded).hex() == vector["header_sha256"]
    assert out.getvalue().hex() == vector["sealed"]


@pytest.mark.parametrize("vector", POSITIVE, ids=ids(POSITIVE))
def test_vector_opens_to_its_plaintext(vector: dict[str, Any]) -> None:
    src = io.BytesIO(bytes.fromhex(vector["sealed"]))
    header = read_header(src)
    assert header.key_id == vector["key_id"]
    assert header.wrapped_key == vector["wrapped_key"]
    assert header.context == vector["context"]
    assert header.segment_size == vector["segment_size"]
    out = io.BytesIO()
    unseal_with_key(src, out, header, bytes.fromhex(vector["data_key"]))
    assert out.getvalue() == plaintext(vector["plaintext_length"])


@pytest.mark.parametrize("vector", POSITIVE, ids=ids(POSITIVE))
def test_file_key_is_the_documented_derivation(vector: dict[str, Any]) -> None:
    derived = derive_file_key(
        bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["salt"])
    )
    assert derived.hex() == vector["file_key"]


def edit(
    sealed: bytes, header_size: int, segment_size: int, change: dict[str, Any]
) -> bytes:
    if "flip" in change:
        offset, mask = change["flip"]
        altered = bytearray(sealed)
        altered[offset] ^= mask
        return bytes(altered)
    if "truncate" in change:
        return sealed[: change["truncate"]]
    if "append" in change:
        return sealed + bytes.fromhex(change["append"])
    step = segment_size + TAG_SIZE
    body = sealed[header_size:]
    segments = [body[i : i + step] for i in range(0, len(body), step)]
    return sealed[:header_size] + b"".join(segments[i] for i in change["reorder"])


@pytest.mark.parametrize("vector", NEGATIVE, ids=ids(NEGATIVE))
def test_negative_vector_is_rejected_even_with_the_data_key(
    vector: dict[str, Any],
) -> None:
    base = BY_NAME[vector["base"]]
    sealed = bytes.fromhex(base["sealed"])
    header_size = len(bytes.fromhex(base["header"]))
    altered = edit(sealed, header_size, base["segment_size"], vector["edit"])
    assert altered != sealed
    src = io.BytesIO(altered)
    with pytest.raises(DecryptionError):
        unseal_with_key(
            src, io.BytesIO(), read_header(src), bytes.fromhex(base["data_key"])
        )


def test_vector_file_is_what_the_independent_generator_writes() -> None:
    path = VECTORS / "generate_file_v1.py"
    spec = importlib.util.spec_from_file_location("generate_file_v1", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == FILE
