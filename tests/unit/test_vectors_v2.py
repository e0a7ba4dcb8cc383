"""Wire format v2 vectors (tests/vectors/envelope_v2.json) against our code.

The generator builds every byte from the spec, without envelope_mq; here our
sealer must reproduce each positive vector, and our reader (the consumer's own
AMQP decoder, then the Opener) must open it from its raw content header, and
refuse each negative one the way it says: before any KMS call or after.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.outcome import Reason, Verdict, admit
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared import wire, wire_v2
from envelope_mq.shared.content_header import decode_basic_properties
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import DecryptionError, MalformedMessageError
from envelope_mq.shared.kms import DataKey, UnwrappedKey, WrappedCopy, local_copy

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
DOCUMENT = json.loads((VECTORS / "envelope_v2.json").read_text(encoding="utf-8"))
POSITIVE = [v for v in DOCUMENT["vectors"] if not v["fail"]]
V2 = [v for v in POSITIVE if v.get("wire_version", 2) == 2]
NEGATIVE = [v for v in DOCUMENT["vectors"] if v["fail"]]


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


class Kms:
    """Seals with the vector's data key and copies; unwraps to its data key."""

    def __init__(self, vector: Mapping[str, Any]) -> None:
        self.key = bytes.fromhex(vector["data_key"])
        self.copies = [WrappedCopy(**c) for c in vector.get("copies", [])]
        self.unwraps = 0

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        first, *extra = self.copies
        return DataKey(self.key, first.blob, first.key_id, first.region, tuple(extra))

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, Any]:
        self.unwraps += 1
        copy = local_copy(copies)
        if len(self.key) != 32:  # what a broken KMS could hand back
            from types import SimpleNamespace

            return copy, SimpleNamespace(plaintext=self.key, key_id=copy.key_id)
        return copy, UnwrappedKey(self.key, copy.key_id)


def _received(vector: Mapping[str, Any]) -> tuple[Mapping[str, object], MessageMeta]:
    props = decode_basic_properties(bytes.fromhex(vector["content_header"]))
    assert props.defects == ()
    headers = props.headers or {}
    meta = MessageMeta(
        props.message_id,  # type: ignore[arg-type]  # None is a negative case
        props.timestamp,  # type: ignore[arg-type]
        props.content_type,
        props.content_encoding,
        props.type,
        headers.get(wire_v2.CAUSE_HEADER),  # type: ignore[arg-type]
    )
    return headers, meta


def _json_headers(vector: Mapping[str, Any]) -> dict[str, object]:
    def value(code: str, raw: Any) -> object:
        return bytes.fromhex(raw) if code == "x" else raw

    return {name: value(code, raw) for name, (code, raw) in vector["headers"].items()}


@pytest.mark.parametrize("vector", V2, ids=_ids(V2))
def test_sealing_reproduces_the_vector(vector: dict[str, Any]) -> None:
    kms = Kms(vector)
    sealer = Sealer(kms, kms.copies[0].key_id, vector["context"])
    meta = MessageMeta(**vector["properties"], causation_id=vector["causation_id"])
    sealed = sealer._seal_with(
        bytes.fromhex(vector["plaintext"]), meta, nonce=bytes.fromhex(vector["nonce"])
    )
    assert sealed.headers == _json_headers(vector)
    assert sealed.body.hex() == vector["body"]
    value = sealed.headers[wire_v2.HEADER]
    assert isinstance(value, bytes)
    assert len(value) == vector["x_emq_size"] <= wire_v2.MAX_VALUE_BYTES
    aad = wire_v2.key_aad(value) + wire.message_aad(
        meta.message_id,
        meta.timestamp,
        meta.content_type,
        meta.content_encoding,
        meta.type,
    )
    assert (aad + wire_v2.cause_field(meta.causation_id)).hex() == vector["aad"]


@pytest.mark.parametrize("vector", POSITIVE, ids=_ids(POSITIVE))
def test_the_raw_content_header_opens(vector: dict[str, Any]) -> None:
    headers, meta = _received(vector)
    assert headers == _json_headers(vector)
    opener = Opener(Kms(vector))
    opened = opener.open(bytes.fromhex(vector["body"]), opener.parse(headers), meta)
    assert opened.plaintext.hex() == vector["plaintext"]
    if "context" in vector:
        assert dict(opened.context) == vector["context"]


@pytest.mark.parametrize("vector", NEGATIVE, ids=_ids(NEGATIVE))
def test_negative_vector_is_refused_where_it_says(vector: dict[str, Any]) -> None:
    headers, meta = _received(vector)
    kms = Kms(vector)
    opener = Opener(kms)
    with pytest.raises(DecryptionError) as caught:
        opener.open(bytes.fromhex(vector["body"]), opener.parse(headers), meta)
    assert str(caught.value) == DecryptionError.MESSAGE
    assert isinstance(caught.value, MalformedMessageError) == vector["before_kms"]
    assert kms.unwraps == (0 if vector["before_kms"] else 1)


@pytest.mark.parametrize("vector", NEGATIVE, ids=_ids(NEGATIVE))
def test_the_consumer_quarantines_negative_vectors_with_the_right_reason(
    vector: dict[str, Any],
) -> None:
    props = decode_basic_properties(bytes.fromhex(vector["content_header"]))
    delivery = Delivery(
        bytes.fromhex(vector["body"]),
        props.headers or {},
        props.message_id,
        props.timestamp,
        props.content_type,
        props.content_encoding,
        props.type,
        redelivered=False,
        delivery_tag=1,
    )
    outcome = admit(delivery, Opener(Kms(vector)), policy=ContextPolicy())
    assert getattr(outcome, "verdict", None) is Verdict.QUARANTINE
    expected = Reason.MALFORMED if vector["before_kms"] else Reason.UNDECRYPTABLE
    assert outcome.reason is expected  # type: ignore[union-attr]


def test_the_vectors_cover_what_the_spec_promises() -> None:
    names = " ".join(v["name"] for v in DOCUMENT["vectors"])
    for kind in (
        "exactly at the 4096-byte budget",
        "one byte over the budget",
        "16-byte data key",
        "two copies",
        "three copies",
        "causation id",
        "v1 body under v2 headers",
        "v2 body under v1 headers",
        "beside x-emq",
        "27 bytes",
    ):
        assert kind in names, kind
    codes = {
        v["headers"]["x-emq-version"][0]
        for v in POSITIVE
        if "x-emq-version" in v["headers"]
    }
    assert codes == set("bBsuiIlL")
    assert {v["before_kms"] for v in NEGATIVE} == {True, False}


def test_vector_file_is_what_the_generator_writes() -> None:
    path = VECTORS / "generate_envelope_v2.py"
    spec = importlib.util.spec_from_file_location("generate_envelope_v2", path)
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (VECTORS / "envelope_v2.json").read_text(encoding="utf-8") == (
        generator.render()
    )
