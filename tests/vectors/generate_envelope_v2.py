"""Write tests/vectors/envelope_v2.json, deterministically, from the spec alone.

    python tests/vectors/generate_envelope_v2.py          # (re)write the file
    python tests/vectors/generate_envelope_v2.py --check  # exit 1 if it differs

Independent of the sealer: nothing from envelope_mq is imported. The x-emq
value, the associated data, the AMQP field table and the Basic property list
are built here byte by byte from docs/wire-format.md §11 (and §5 for v1 bodies
of the mix-up vectors), with ``cryptography``'s AESGCM. tests/unit/
test_vectors_v2.py checks that our sealer reproduces every positive vector and
our reader refuses every negative one (``before_kms``: without a KMS call).

Each vector's ``content_header`` is the Basic property list exactly as it
travels in the AMQP content header (property flags, then the properties; the
``headers`` table with its type codes): the type-level form, which a reader
decodes with its own AMQP decoder. ``headers`` and ``properties`` say the same
in JSON: a header is ``[type code, value]``, the value hex for ``x``, text for
``S``, a number for the integer codes.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OUT = Path(__file__).with_name("envelope_v2.json")

KEY_ID = "0b30658a-ed1a-4922-b8f7-a673ca9c2ab4"
KEY_SH = "5e3f8a40-7c1d-4b8e-9a61-0d2c3b4a5f60"
KEY_EU = "acs:kms:eu-central-1:1234567890:key/key-eu-Ω"
BUDGET = 4096
Header = tuple[str, Any]  # (AMQP type code, value)


def _derive(label: str, size: int) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


def _blob(label: str, size: int = 60) -> str:
    """A CiphertextBlob: canonical standard base64 of opaque bytes."""
    raw = hashlib.shake_256(label.encode()).digest(size)
    return base64.b64encode(raw).decode("ascii")


def _canonical(context: dict[str, str]) -> str:
    return json.dumps(
        context, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


# --- §11: the x-emq value ------------------------------------------------------


def x_emq(
    context_json: str, copies: list[dict[str, str]], *, version: int = 2, alg: int = 1
) -> bytes:
    context = context_json.encode("utf-8")
    out = bytes((version, alg)) + struct.pack(">H", len(context)) + context
    out += bytes((len(copies),))
    for c in copies:
        region, key_id = c["region"].encode(), c["key_id"].encode()
        blob = base64.b64decode(c["blob"])
        out += bytes((len(region),)) + region + bytes((len(key_id),)) + key_id
        out += struct.pack(">H", len(blob)) + blob
    return out


def _field(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + struct.pack(">I", len(value)) + value


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def _message_fields(props: dict[str, Any]) -> bytes:
    return b"".join(
        (
            _field(_text(props["message_id"])),
            _field(struct.pack(">Q", props["timestamp"])),
            _field(_text(props.get("content_type"))),
            _field(_text(props.get("content_encoding"))),
            _field(_text(props.get("type"))),
        )
    )


def aad_v2(value: bytes, props: dict[str, Any], cause: str | None) -> bytes:
    return (
        _field(struct.pack(">Q", 2))
        + _field(value)
        + _message_fields(props)
        + _field(_text(cause))
    )


def aad_v1(key_id: str, blob: str, context_json: str, props: dict[str, Any]) -> bytes:
    return (
        _field(struct.pack(">Q", 1))
        + _field(b"AES-256-GCM")
        + _field(key_id.encode())
        + _field(blob.encode())
        + _field(context_json.encode())
        + _message_fields(props)
    )


# --- AMQP 0-9-1: the field table and the Basic property list --------------------

_INT = {
    "b": ">b",
    "B": ">B",
    "s": ">h",
    "u": ">H",
    "i": ">I",
    "I": ">i",
    "l": ">q",
    "L": ">q",
    "d": ">d",
}


def _value(code: str, value: Any) -> bytes:
    if code == "x":
        raw = bytes.fromhex(value)
        return b"x" + struct.pack(">I", len(raw)) + raw
    if code == "S":
        raw = value.encode("utf-8")
        return b"S" + struct.pack(">I", len(raw)) + raw
    if code == "V":
        return b"V"
    return code.encode() + struct.pack(_INT[code], value)


def table(headers: dict[str, Header]) -> bytes:
    entries = b"".join(
        bytes((len(name.encode()),)) + name.encode() + _value(code, value)
        for name, (code, value) in headers.items()
    )
    return struct.pack(">I", len(entries)) + entries


def _shortstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    return bytes((len(raw),)) + raw


def content_header(headers: dict[str, Header], props: dict[str, Any]) -> bytes:
    """Property flags, then content_type, content_encoding, headers,
    delivery_mode (2), message_id, timestamp, type: each only when set."""
    flags, parts = 0, []
    for name, bit in (("content_type", 15), ("content_encoding", 14)):
        if props.get(name) is not None:
            flags |= 1 << bit
            parts.append(_shortstr(props[name]))
    flags |= 1 << 13 | 1 << 12
    parts += [table(headers), b"\x02"]
    if props.get("message_id") is not None:
        flags |= 1 << 7
        parts.append(_shortstr(props["message_id"]))
    if props.get("timestamp") is not None:
        flags |= 1 << 6
        parts.append(struct.pack(">Q", props["timestamp"]))
    if props.get("type") is not None:
        flags |= 1 << 5
        parts.append(_shortstr(props["type"]))
    return struct.pack(">H", flags) + b"".join(parts)


# --- positive vectors -------------------------------------------------------------


def _props(message_id: str, timestamp: int, **optional: str | None) -> dict[str, Any]:
    fields = ("content_type", "content_encoding", "type")
    return {
        "message_id": message_id,
        "timestamp": timestamp,
        **{name: optional.get(name) for name in fields},
    }


def _copy(region: str, key_id: str, blob: str) -> dict[str, str]:
    return {"region": region, "key_id": key_id, "blob": blob}


def _at_budget() -> str:
    # version, alg, u16 + "{}", count, u8 + "", u8 + key id, u16 + blob
    fixed = 2 + 2 + 2 + 1 + 1 + 1 + len(KEY_ID) + 2
    return _blob("at budget", BUDGET - fixed)


_POSITIVE: list[dict[str, Any]] = [
    {
        "name": "one copy, empty context, required properties only",
        "context": {},
        "copies": [_copy("", KEY_ID, _blob("wrapped 1"))],
        "properties": _props("m-0001", 1700000000),
        "causation_id": None,
        "plaintext": b"hello, envelope",
    },
    {
        "name": "context, every bound property and a causation id",
        "context": {"tenant": "acme", "app": "orders"},
        "copies": [_copy("", KEY_ID, _blob("wrapped 2"))],
        "properties": _props(
            "7f9c24e5-2e4a-4b4e-9d3b-8c2f5a1e6b70",
            1735689600,
            content_type="application/json",
            content_encoding="utf-8",
            type="order.created",
        ),
        "causation_id": "3d0f6a1c-5b7e-4e2a-8f90-1a2b3c4d5e6f",
        "plaintext": b'{"order":42,"total":"19.99"}',
    },
    {
        "name": "two copies: the primary in the default KMS, one in cn-shanghai",
        "context": {"tenant": "acme"},
        "copies": [
            _copy("", KEY_ID, _blob("wrapped 3")),
            _copy("cn-shanghai", KEY_SH, _blob("wrapped 3 sh", 56)),
        ],
        "properties": _props("m-0003", 1735689602, content_type="text/plain"),
        "causation_id": None,
        "plaintext": b"two regions",
    },
    {
        "name": "three copies, none in the default region first; unicode everywhere",
        "context": {"région": "eu", "名前": "値"},
        "copies": [
            _copy("cn-hangzhou", KEY_ID, _blob("wrapped 4")),
            _copy("eu-central-1", KEY_EU, _blob("wrapped 4 eu", 100)),
            _copy("", KEY_SH, _blob("wrapped 4 default", 1)),
        ],
        "properties": _props("msg-ü-4", 0, type="grüße", content_encoding=""),
        "causation_id": "cause-ü",
        "plaintext": "grüße, 世界".encode(),
    },
    {
        "name": "x-emq exactly at the 4096-byte budget; empty plaintext",
        "context": {},
        "copies": [_copy("", KEY_ID, _at_budget())],
        "properties": _props("m-0005", 2**32 + 7),
        "causation_id": None,
        "plaintext": b"",
    },
    {
        "name": "1 KiB binary plaintext; the longest causation id (255 bytes)",
        "context": {'quote"': "back\\slash", "line": "a\nb"},
        "copies": [_copy("", KEY_ID, _blob("wrapped 6"))],
        "properties": _props("m-0006", 1735689606),
        "causation_id": "c" * 255,
        "plaintext": bytes(i % 251 for i in range(1024)),
    },
]


def _headers(value: bytes, cause: str | None) -> dict[str, Header]:
    headers: dict[str, Header] = {"x-emq": ("x", value.hex())}
    if cause is not None:
        headers["x-emq-cause"] = ("S", cause)
    return headers


def _positive(index: int, spec: dict[str, Any]) -> dict[str, Any]:
    data_key = _derive(f"data key {index}", 32)
    nonce = _derive(f"nonce {index}", 12)
    value = x_emq(_canonical(spec["context"]), spec["copies"])
    aad = aad_v2(value, spec["properties"], spec["causation_id"])
    body = nonce + AESGCM(data_key).encrypt(nonce, spec["plaintext"], aad)
    headers = _headers(value, spec["causation_id"])
    return {
        "name": spec["name"],
        "fail": False,
        "data_key": data_key.hex(),
        "context": spec["context"],
        "copies": spec["copies"],
        "nonce": nonce.hex(),
        "properties": spec["properties"],
        "causation_id": spec["causation_id"],
        "plaintext": spec["plaintext"].hex(),
        "x_emq_size": len(value),
        "headers": {k: list(v) for k, v in headers.items()},
        "content_header": content_header(headers, spec["properties"]).hex(),
        "aad": aad.hex(),
        "body": body.hex(),
    }


# --- v1 at the AMQP type level -----------------------------------------------------

_V1_ONE = {"b": 1, "B": 1, "s": 1, "u": 1, "i": 1, "I": 1, "l": 1, "L": 1}


def _v1(
    props: dict[str, Any], version: Header, *, index: int = 1
) -> tuple[dict[str, Header], bytes, bytes]:
    data_key = _derive(f"data key {index}", 32)
    nonce = _derive(f"v1 nonce {index}", 12)
    blob, context_json = _blob(f"v1 wrapped {index}"), "{}"
    aad = aad_v1(KEY_ID, blob, context_json, props)
    body = nonce + AESGCM(data_key).encrypt(nonce, b"v1 message", aad)
    headers: dict[str, Header] = {
        "x-emq-version": version,
        "x-emq-alg": ("S", "AES-256-GCM"),
        "x-emq-key-id": ("S", KEY_ID),
        "x-emq-data-key": ("S", blob),
        "x-emq-context": ("S", context_json),
    }
    return headers, body, data_key


def _v1_integer_vectors() -> list[dict[str, Any]]:
    props = _props("v1-int", 1735689600)
    out = []
    for code, one in _V1_ONE.items():
        headers, body, data_key = _v1(props, (code, one))
        out.append(
            {
                "name": f"v1: x-emq-version 1 as AMQP type {code}",
                "fail": False,
                "wire_version": 1,
                "data_key": data_key.hex(),
                "properties": props,
                "plaintext": b"v1 message".hex(),
                "headers": {k: list(v) for k, v in headers.items()},
                "content_header": content_header(headers, props).hex(),
                "body": body.hex(),
            }
        )
    return out


# --- negative vectors ---------------------------------------------------------------


def _negative(
    base: dict[str, Any],
    name: str,
    *,
    before_kms: bool,
    headers: dict[str, Header] | None = None,
    drop: tuple[str, ...] = (),
    properties: dict[str, Any] | None = None,
    body: bytes | None = None,
    data_key: bytes | None = None,
) -> dict[str, Any]:
    merged: dict[str, Header] = {k: (v[0], v[1]) for k, v in base["headers"].items()}
    merged.update(headers or {})
    for header in drop:
        del merged[header]
    props = copy.deepcopy(base["properties"])
    props.update(properties or {})
    return {
        "name": name,
        "fail": True,
        "before_kms": before_kms,
        "data_key": data_key.hex() if data_key is not None else base["data_key"],
        "properties": props,
        "headers": {k: list(v) for k, v in merged.items()},
        "content_header": content_header(merged, props).hex(),
        "body": body.hex() if body is not None else base["body"],
    }


def _flip(hex_body: str, index: int) -> bytes:
    body = bytearray(bytes.fromhex(hex_body))
    body[index] ^= 0x01
    return bytes(body)


def _negatives(pos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    one, full, two, three, at_budget = pos[0], pos[1], pos[2], pos[3], pos[4]
    body = bytes.fromhex(full["body"])
    ctx_json = _canonical(full["context"])

    def xv(value: bytes) -> dict[str, Header]:
        return {"x-emq": ("x", value.hex())}

    def full_with(copies: list[dict[str, str]], **kw: Any) -> dict[str, Header]:
        return xv(x_emq(ctx_json, copies, **kw))

    full_copy = full["copies"]
    value = bytes.fromhex(full["headers"]["x-emq"][1])
    two_copies = two["copies"]
    two_ctx = _canonical(two["context"])
    v1_headers = v1_headers_for(full)
    neg: list[dict[str, Any]] = [
        # after the unwrap: the tag
        _negative(
            full, "tag bit flipped", before_kms=False, body=_flip(full["body"], -1)
        ),
        _negative(
            full,
            "ciphertext bit flipped",
            before_kms=False,
            body=_flip(full["body"], 12),
        ),
        _negative(
            full, "nonce bit flipped", before_kms=False, body=_flip(full["body"], 0)
        ),
        _negative(full, "body missing its last byte", before_kms=False, body=body[:-1]),
        _negative(full, "body of 27 bytes", before_kms=True, body=body[:27]),
        _negative(full, "empty body", before_kms=True, body=b""),
        _negative(
            full,
            "wrong data key",
            before_kms=False,
            data_key=bytes.fromhex(one["data_key"]),
        ),
        _negative(
            full,
            "KMS returns a 16-byte data key",
            before_kms=False,
            data_key=bytes.fromhex(full["data_key"])[:16],
        ),
        _negative(
            full,
            "body of another message",
            before_kms=False,
            body=bytes.fromhex(one["body"]),
        ),
        _negative(
            full,
            "message_id changed",
            before_kms=False,
            properties={"message_id": "m-9"},
        ),
        _negative(
            full,
            "timestamp changed",
            before_kms=False,
            properties={"timestamp": 1735689601},
        ),
        _negative(
            full,
            "content_type changed",
            before_kms=False,
            properties={"content_type": "text/plain"},
        ),
        _negative(
            full,
            "content_encoding removed",
            before_kms=False,
            properties={"content_encoding": None},
        ),
        _negative(full, "type removed", before_kms=False, properties={"type": None}),
        _negative(
            full, "message_id empty", before_kms=True, properties={"message_id": ""}
        ),
        _negative(
            full, "message_id absent", before_kms=True, properties={"message_id": None}
        ),
        _negative(
            full, "timestamp absent", before_kms=True, properties={"timestamp": None}
        ),
        # the causation id
        _negative(
            full, "causation id removed", before_kms=False, drop=("x-emq-cause",)
        ),
        _negative(
            one,
            "causation id added",
            before_kms=False,
            headers={"x-emq-cause": ("S", "m-0")},
        ),
        _negative(
            full,
            "causation id changed",
            before_kms=False,
            headers={"x-emq-cause": ("S", "other")},
        ),
        _negative(
            full,
            "causation id empty",
            before_kms=True,
            headers={"x-emq-cause": ("S", "")},
        ),
        _negative(
            full,
            "causation id of 256 bytes",
            before_kms=True,
            headers={"x-emq-cause": ("S", "c" * 256)},
        ),
        _negative(
            full,
            "causation id as a byte array",
            before_kms=True,
            headers={"x-emq-cause": ("x", b"m-0".hex())},
        ),
        _negative(
            full,
            "causation id void",
            before_kms=True,
            headers={"x-emq-cause": ("V", None)},
        ),
        # x-emq, byte by byte
        _negative(
            full,
            "x-emq as a long string",
            before_kms=True,
            headers={"x-emq": ("S", "x")},
        ),
        _negative(full, "x-emq void", before_kms=True, headers={"x-emq": ("V", None)}),
        _negative(full, "x-emq empty", before_kms=True, headers=xv(b"")),
        _negative(
            full,
            "x-emq version 1",
            before_kms=True,
            headers=full_with(full_copy, version=1),
        ),
        _negative(
            full,
            "x-emq version 3",
            before_kms=True,
            headers=full_with(full_copy, version=3),
        ),
        _negative(
            full,
            "x-emq algorithm 0",
            before_kms=True,
            headers=full_with(full_copy, alg=0),
        ),
        _negative(
            full,
            "x-emq algorithm 2",
            before_kms=True,
            headers=full_with(full_copy, alg=2),
        ),
        _negative(
            full,
            "x-emq with a trailing byte",
            before_kms=True,
            headers=xv(value + b"\x00"),
        ),
        _negative(
            full, "x-emq truncated by one byte", before_kms=True, headers=xv(value[:-1])
        ),
        _negative(
            full, "x-emq with no copy", before_kms=True, headers=xv(x_emq(ctx_json, []))
        ),
        _negative(
            full,
            "x-emq with 9 copies",
            before_kms=True,
            headers=full_with(full_copy * 9),
        ),
        _negative(
            full,
            "a copy with an empty key id",
            before_kms=True,
            headers=full_with([_copy("", "", full_copy[0]["blob"])]),
        ),
        _negative(
            full,
            "a copy with an empty blob",
            before_kms=True,
            headers=full_with([_copy("", KEY_ID, "")]),
        ),
        _negative(
            full,
            "a key id that is not UTF-8",
            before_kms=True,
            headers=xv(_bad_utf8_key(ctx_json, full_copy[0]["blob"])),
        ),
        _negative(
            full,
            "context of length 0 (only {} is the empty context)",
            before_kms=True,
            headers=xv(x_emq("", full_copy)),
        ),
        _negative(
            full,
            "context with whitespace",
            before_kms=True,
            headers=xv(x_emq('{"app": "orders", "tenant": "acme"}', full_copy)),
        ),
        _negative(
            full,
            "context keys unsorted",
            before_kms=True,
            headers=xv(x_emq('{"tenant":"acme","app":"orders"}', full_copy)),
        ),
        _negative(
            full,
            "context changed",
            before_kms=False,
            headers=xv(x_emq('{"app":"orders","tenant":"evil"}', full_copy)),
        ),
        _negative(
            full,
            "key id changed",
            before_kms=False,
            headers=full_with([_copy("", "alias/other", full_copy[0]["blob"])]),
        ),
        _negative(
            full,
            "region label changed",
            before_kms=False,
            headers=full_with([_copy("cn-hangzhou", KEY_ID, full_copy[0]["blob"])]),
        ),
        _negative(
            full,
            "blob of another data key",
            before_kms=False,
            headers=full_with([_copy("", KEY_ID, one["copies"][0]["blob"])]),
        ),
        _negative(
            two,
            "second copy dropped",
            before_kms=False,
            headers=xv(x_emq(two_ctx, two_copies[:1])),
        ),
        _negative(
            two,
            "copies swapped",
            before_kms=False,
            headers=xv(x_emq(two_ctx, two_copies[::-1])),
        ),
        _negative(
            two,
            "second copy's key id changed",
            before_kms=False,
            headers=xv(
                x_emq(two_ctx, [two_copies[0], {**two_copies[1], "key_id": KEY_EU}])
            ),
        ),
        _negative(
            three,
            "a fourth copy added",
            before_kms=False,
            headers=xv(
                x_emq(
                    _canonical(three["context"]),
                    [*three["copies"], _copy("us", KEY_ID, _blob("x"))],
                )
            ),
        ),
        _negative(
            at_budget,
            "x-emq one byte over the budget (4097)",
            before_kms=True,
            headers=xv(
                x_emq(
                    "{}",
                    [
                        _copy(
                            "",
                            KEY_ID,
                            base64.b64encode(
                                base64.b64decode(at_budget["copies"][0]["blob"])
                                + b"\x00"
                            ).decode(),
                        )
                    ],
                )
            ),
        ),
        # unknown names, mix-ups, downgrades
        _negative(
            full,
            "an unknown x-emq-* header",
            before_kms=True,
            headers={"x-emq-hint": ("S", "1")},
        ),
        _negative(
            full,
            "v1's x-emq-version beside x-emq",
            before_kms=True,
            headers={"x-emq-version": ("I", 1)},
        ),
        _negative(
            full, "v1's five headers beside x-emq", before_kms=True, headers=v1_headers
        ),
        _negative(
            full,
            "a v2 body under v1 headers (same data key)",
            before_kms=False,
            drop=("x-emq", "x-emq-cause"),
            headers=v1_headers_for(full),
        ),
        _negative(
            full,
            "a v1 body under v2 headers (same data key)",
            before_kms=False,
            body=v1_body_for(full),
        ),
        _negative(
            full,
            "x-emq-cause on a v1 message",
            before_kms=True,
            drop=("x-emq",),
            headers=v1_headers_for(full),
        ),
    ]
    return neg


def _bad_utf8_key(context_json: str, blob: str) -> bytes:
    good = x_emq(context_json, [_copy("", "k", blob)])
    # the one-byte key id "k" sits right after the count and the empty region
    at = good.index(b"\x01k") + 1
    return good[:at] + b"\xff" + good[at + 1 :]


def v1_headers_for(vector: dict[str, Any]) -> dict[str, Header]:
    """v1's five headers for the same data key, blob and context as ``vector``."""
    c = vector["copies"][0]
    return {
        "x-emq-version": ("I", 1),
        "x-emq-alg": ("S", "AES-256-GCM"),
        "x-emq-key-id": ("S", c["key_id"]),
        "x-emq-data-key": ("S", c["blob"]),
        "x-emq-context": ("S", _canonical(vector["context"])),
    }


def v1_body_for(vector: dict[str, Any]) -> bytes:
    """The same plaintext sealed as v1 (AAD of §5) under the vector's data key."""
    c = vector["copies"][0]
    aad = aad_v1(
        c["key_id"], c["blob"], _canonical(vector["context"]), vector["properties"]
    )
    nonce = bytes.fromhex(vector["nonce"])
    key = AESGCM(bytes.fromhex(vector["data_key"]))
    return nonce + key.encrypt(nonce, bytes.fromhex(vector["plaintext"]), aad)


def build() -> dict[str, Any]:
    """Return the whole vector document."""
    positives = [_positive(i, spec) for i, spec in enumerate(_POSITIVE, start=1)]
    return {
        "description": (
            "envelope-mq wire format v2 (docs/wire-format.md §11). Hex strings "
            "for bytes. Positive vectors: sealing plaintext with data_key and "
            "nonce under context, copies, properties and causation_id gives "
            "exactly headers and body; content_header is the AMQP Basic "
            "property list that carries them; aad is shown for implementers. "
            "wire_version 1: v1 messages whose x-emq-version has each AMQP "
            "integer type; they must open. fail=true: a reader given "
            "content_header and body, whose KMS unwraps to data_key, must "
            "refuse; before_kms: without calling KMS."
        ),
        "generator": "tests/vectors/generate_envelope_v2.py",
        "vectors": positives + _v1_integer_vectors() + _negatives(positives),
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
