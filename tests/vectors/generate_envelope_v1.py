"""Write tests/vectors/envelope_v1.json, deterministically, from shared.envelope.

    python tests/vectors/generate_envelope_v1.py          # (re)write the file
    python tests/vectors/generate_envelope_v1.py --check  # exit 1 if it differs

Positive vectors are sealed through ``Sealer._seal_with`` with fixed keys and
nonces; negative ones (``"fail": true``) are single changes to a positive one
that every reader must refuse with the one DecryptionError. In ``headers``, a
value ``{"bytes": "<hex>"}`` stands for an AMQP byte string (what pika hands
over for a value that is not UTF-8); every other value is the JSON type itself.
``before_kms`` says that a reader must refuse the message without asking KMS.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envelope_mq.shared import wire
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.kms import DataKey

OUT = Path(__file__).with_name("envelope_v1.json")

KEY_ID = "0b30658a-ed1a-4922-b8f7-a673ca9c2ab4"


def _derive(label: str, size: int) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


def _wrapped(label: str) -> str:
    # Shaped like a KMS CiphertextBlob (base64); a reader treats it as opaque.
    return base64.b64encode(hashlib.sha512(label.encode()).digest()[:60]).decode()


class _FixedKey:
    """A DataKeySource that always hands out one data key."""

    def __init__(self, data_key: DataKey) -> None:
        self.data_key = data_key

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.data_key


_POSITIVE: list[dict[str, Any]] = [
    {
        "name": "empty context, required properties only, short text",
        "context": {},
        "properties": {"message_id": "m-0001", "timestamp": 1700000000},
        "plaintext": b"hello, envelope",
    },
    {
        "name": "context and every bound property",
        "context": {"tenant": "acme", "app": "orders"},
        "properties": {
            "message_id": "7f9c24e5-2e4a-4b4e-9d3b-8c2f5a1e6b70",
            "timestamp": 1735689600,
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "type": "order.created",
        },
        "plaintext": b'{"order":42,"total":"19.99"}',
    },
    {
        "name": "empty plaintext; content_encoding present but empty",
        "context": {"ab": "c"},
        "properties": {
            "message_id": "m-0003",
            "timestamp": 0,
            "content_type": "text/plain",
            "content_encoding": "",
        },
        "plaintext": b"",
    },
    {
        "name": "unicode context keys and values, unicode properties",
        "context": {"région": "eu-west", "名前": "値", "emoji": "🔐", "Zeta": "z"},
        "properties": {
            "message_id": "msg-ü-1",
            "timestamp": 1735689601,
            "content_type": "text/plain; charset=utf-8",
            "type": "grüße",
        },
        "plaintext": "grüße, 世界".encode(),
    },
    {
        "name": "context that needs JSON escapes; 1 KiB binary plaintext",
        "context": {'quote"': "back\\slash", "line": "a\nb\tc\u0001"},
        "properties": {"message_id": "m-0005", "timestamp": 2**32 + 7},
        "plaintext": bytes(i % 251 for i in range(1024)),
    },
    {
        "name": "a second message under the data key and context of vector 2",
        "key": 2,
        "context": {"tenant": "acme", "app": "orders"},
        "properties": {
            "message_id": "0c3a1f0e-8d55-4f0b-a0a7-52b1d0f8e9c1",
            "timestamp": 1735689600,
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "type": "order.created",
        },
        "plaintext": b'{"order":43,"total":"5.00"}',
    },
]


def _properties(spec: Mapping[str, Any]) -> MessageMeta:
    return MessageMeta(**spec)


def _positive(index: int, spec: Mapping[str, Any]) -> dict[str, Any]:
    key_index = spec.get("key", index)
    data_key = DataKey(
        plaintext=_derive(f"data key {key_index}", 32),
        wrapped=_wrapped(f"wrapped {key_index}"),
        key_id=KEY_ID,
    )
    nonce = _derive(f"nonce {index}", 12)
    meta = _properties(spec["properties"])
    sealer = Sealer(_FixedKey(data_key), KEY_ID, spec["context"], wire_version=1)
    sealed = sealer._seal_with(spec["plaintext"], meta, nonce=nonce)
    context_json = sealed.headers[wire.CONTEXT_HEADER]
    assert isinstance(context_json, str)
    aad = wire.key_aad(KEY_ID, data_key.wrapped, context_json) + wire.message_aad(
        meta.message_id,
        meta.timestamp,
        meta.content_type,
        meta.content_encoding,
        meta.type,
    )
    return {
        "name": spec["name"],
        "fail": False,
        "data_key": data_key.plaintext.hex(),
        "context": spec["context"],
        "nonce": nonce.hex(),
        "properties": _all_properties(spec["properties"]),
        "plaintext": spec["plaintext"].hex(),
        "headers": sealed.headers,
        "aad": aad.hex(),
        "body": sealed.body.hex(),
    }


def _all_properties(spec: Mapping[str, Any]) -> dict[str, Any]:
    fields = ("content_type", "content_encoding", "type")
    return {**spec, **{name: spec.get(name) for name in fields}}


def _negative(
    base: Mapping[str, Any], name: str, *, before_kms: bool, **changes: Any
) -> dict[str, Any]:
    vector = {
        "name": name,
        "fail": True,
        "before_kms": before_kms,
        "data_key": base["data_key"],
        "properties": copy.deepcopy(base["properties"]),
        "headers": copy.deepcopy(base["headers"]),
        "body": base["body"],
    }
    for key, value in changes.items():
        if key == "headers":
            vector["headers"].update(value)
        elif key == "drop_header":
            del vector["headers"][value]
        elif key == "properties":
            vector["properties"].update(value)
        else:
            vector[key] = value
    return vector


def _flip(hex_body: str, index: int) -> str:
    body = bytearray(bytes.fromhex(hex_body))
    body[index] ^= 0x01
    return body.hex()


def _negatives(positives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    full, other, ab, uni, sibling = (positives[i] for i in (1, 0, 2, 3, 5))
    body = bytes.fromhex(full["body"])
    ver, alg, kid = wire.VERSION_HEADER, wire.ALG_HEADER, wire.KEY_ID_HEADER
    dk, ctx = wire.DATA_KEY_HEADER, wire.CONTEXT_HEADER
    ascii_context = json.dumps(uni["context"], sort_keys=True, separators=(",", ":"))

    def raw(text: str) -> dict[str, str]:
        return {"bytes": text.encode().hex()}

    # (base, name, refused before any KMS call, changes)
    table: list[tuple[dict[str, Any], str, bool, dict[str, Any]]] = [
        (full, "tag bit flipped", False, {"body": _flip(full["body"], -1)}),
        (full, "ciphertext bit flipped", False, {"body": _flip(full["body"], 12)}),
        (full, "nonce bit flipped", False, {"body": _flip(full["body"], 0)}),
        (full, "body missing its last byte", False, {"body": body[:-1].hex()}),
        (full, "body of 27 bytes", True, {"body": body[:27].hex()}),
        (full, "empty body", True, {"body": ""}),
        (full, "wrong data key", False, {"data_key": other["data_key"]}),
        (
            full,
            "body of another message under the same data key and context",
            False,
            {"body": sibling["body"]},
        ),
        (
            full,
            "body of a message under another data key",
            False,
            {"body": other["body"]},
        ),
        (full, "message_id changed", False, {"properties": {"message_id": "m-9"}}),
        (full, "timestamp changed", False, {"properties": {"timestamp": 1735689601}}),
        (
            full,
            "content_type changed",
            False,
            {"properties": {"content_type": "text/plain"}},
        ),
        (
            full,
            "content_encoding removed",
            False,
            {"properties": {"content_encoding": None}},
        ),
        (full, "type changed", False, {"properties": {"type": "order.deleted"}}),
        (
            ab,
            "content_encoding absent, not empty",
            False,
            {"properties": {"content_encoding": None}},
        ),
        (ab, "type empty, not absent", False, {"properties": {"type": ""}}),
        (full, "message_id null", True, {"properties": {"message_id": None}}),
        (full, "timestamp negative", True, {"properties": {"timestamp": -1}}),
        (
            full,
            "timestamp as a string",
            True,
            {"properties": {"timestamp": "1735689600"}},
        ),
        (
            ab,
            'context {"ab":"c"} read as {"a":"bc"}',
            False,
            {"headers": {ctx: '{"a":"bc"}'}},
        ),
        (
            full,
            "context value changed",
            False,
            {"headers": {ctx: '{"app":"orders","tenant":"evil"}'}},
        ),
        (full, "context emptied", False, {"headers": {ctx: "{}"}}),
        (full, "key id changed", False, {"headers": {kid: "alias/other"}}),
        (
            full,
            "wrapped data key changed",
            False,
            {"headers": {dk: other["headers"][dk]}},
        ),
        (full, "version 2", True, {"headers": {ver: 2}}),
        (full, "version 0", True, {"headers": {ver: 0}}),
        (full, "version as a string", True, {"headers": {ver: "1"}}),
        (full, "version as a bool", True, {"headers": {ver: True}}),
        (full, "version as a float", True, {"headers": {ver: 1.0}}),
        (full, "algorithm AES-128-GCM", True, {"headers": {alg: "AES-128-GCM"}}),
        (full, "algorithm in lower case", True, {"headers": {alg: "aes-256-gcm"}}),
        (full, "algorithm as bytes", True, {"headers": {alg: raw("AES-256-GCM")}}),
        (full, "key id as bytes", True, {"headers": {kid: raw(KEY_ID)}}),
        (full, "key id empty", True, {"headers": {kid: ""}}),
        (full, "key id null", True, {"headers": {kid: None}}),
        (full, "wrapped data key as bytes", True, {"headers": {dk: raw("AAAA")}}),
        (full, "wrapped data key as an int", True, {"headers": {dk: 7}}),
        (full, "context as bytes", True, {"headers": {ctx: raw(full["headers"][ctx])}}),
        (
            full,
            "context with whitespace",
            True,
            {"headers": {ctx: '{"app": "orders", "tenant": "acme"}'}},
        ),
        (
            full,
            "context keys unsorted",
            True,
            {"headers": {ctx: '{"tenant":"acme","app":"orders"}'}},
        ),
        (
            full,
            "context with a duplicate key",
            True,
            {"headers": {ctx: '{"app":"x","app":"orders","tenant":"acme"}'}},
        ),
        (
            uni,
            "context with needless \\u escapes",
            True,
            {"headers": {ctx: ascii_context}},
        ),
        (
            full,
            "context value not a string",
            True,
            {"headers": {ctx: '{"app":"orders","tenant":1}'}},
        ),
        (full, "context not an object", True, {"headers": {ctx: '["app","orders"]'}}),
        (full, "context not JSON", True, {"headers": {ctx: "app=orders"}}),
        (full, "context empty string", True, {"headers": {ctx: ""}}),
        (full, "envelope headers over 4 KiB", True, {"headers": {dk: "A" * 4096}}),
    ]
    table += [
        (full, f"missing {name}", True, {"drop_header": name})
        for name in wire.HEADER_NAMES
    ]
    return [
        _negative(base, name, before_kms=before_kms, **changes)
        for base, name, before_kms, changes in table
    ]


def build() -> dict[str, Any]:
    """Return the whole vector document."""
    positives = [_positive(i, spec) for i, spec in enumerate(_POSITIVE, start=1)]
    return {
        "description": (
            "envelope-mq wire format v1 (docs/wire-format.md). Hex strings for "
            "bytes. Positive vectors: sealing plaintext with data_key and nonce "
            "under context and properties gives exactly headers and body; the "
            "aad is shown for implementers. fail=true: a reader given headers, "
            "properties and body, whose KMS unwraps to data_key, must refuse."
        ),
        "generator": "tests/vectors/generate_envelope_v1.py",
        "vectors": positives + _negatives(positives),
    }


def render() -> str:
    """Return the file text exactly as written to disk."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs from the generator")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
