"""Write tests/vectors/file_v1.json from the text of docs/file-format.md.

    python tests/vectors/generate_file_v1.py          # (re)write the file
    python tests/vectors/generate_file_v1.py --check  # exit 1 if it differs

This is a second, independent implementation of the sealed-file format: it
uses only the standard library and ``cryptography``'s primitives, never
``envelope_mq.shared.sealed_file``, so the vectors test our code against the document
rather than against itself. Inputs are derived from fixed labels, so the
output is deterministic.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = Path(__file__).with_name("file_v1.json")
MAGIC = b"EMQSEAL\x00"
INFO = b"envelope-mq sealed file v1 AES-256-GCM segment key"
KEY_ID = "5f0c9c3e-8d1b-4c55-9a1e-2b7d3c4e5f60"


def derive(label: str, size: int) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


def plaintext(length: int) -> bytes:
    # The rule the JSON states: byte i is i mod 251.
    return bytes(i % 251 for i in range(length))


def context_json(context: dict[str, str]) -> str:
    return json.dumps(
        context, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def field(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def seal(v: dict[str, Any]) -> dict[str, Any]:
    """Build the header and segments exactly as docs/file-format.md says."""
    key = bytes.fromhex(v["data_key"])
    salt = bytes.fromhex(v["salt"])
    prefix = bytes.fromhex(v["nonce_prefix"])
    size = v["segment_size"]
    header = (
        MAGIC
        + bytes([1, 1])
        + struct.pack(">I", size)
        + salt
        + prefix
        + field(v["key_id"].encode())
        + field(v["wrapped_key"].encode())
        + field(context_json(v["context"]).encode())
    )
    file_key = HKDF(hashes.SHA256(), 32, salt=salt, info=INFO).derive(key)
    aad = hashlib.sha256(header).digest()
    data = plaintext(v["plaintext_length"])
    # Full segments, then a last one of 0 to size-1 bytes.
    pieces = [data[i : i + size] for i in range(0, len(data) - len(data) % size, size)]
    pieces.append(data[len(pieces) * size :])
    body = b""
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        nonce = prefix + struct.pack(">IB", index, 1 if last else 0)
        body += AESGCM(file_key).encrypt(nonce, piece, aad)
    return {
        **v,
        "file_key": file_key.hex(),
        "header": header.hex(),
        "header_sha256": aad.hex(),
        "segments": len(pieces),
        "sealed": (header + body).hex(),
    }


def positive(
    name: str, length: int, context: dict[str, str], size: int = 4096
) -> dict[str, Any]:
    return seal(
        {
            "name": name,
            "data_key": derive(f"{name}/data key", 32).hex(),
            "key_id": KEY_ID,
            "wrapped_key": base64.b64encode(derive(f"{name}/blob", 32) * 2).decode(),
            "context": context,
            "segment_size": size,
            "salt": derive(f"{name}/salt", 32).hex(),
            "nonce_prefix": derive(f"{name}/prefix", 7).hex(),
            "plaintext_length": length,
        }
    )


POSITIVE = [
    positive("empty plaintext", 0, {}),
    positive("one byte", 1, {"purpose": "vectors"}),
    positive("one short of a segment", 4095, {"b": "2", "a": "1"}),
    positive("exactly one segment", 4096, {}),
    positive("one byte over a segment", 4097, {"ключ": "значение"}),
    positive("two segments and a bit", 8197, {"tenant": "acme"}, size=4100),
]

BASE = "exactly one segment"  # two segments: a full one and an empty last one
HEADER_SIZE = len(
    bytes.fromhex(next(v for v in POSITIVE if v["name"] == BASE)["header"])
)
SEALED_SEGMENT = 4096 + 16

# Edits of the BASE file that every reader must refuse. Offsets are into the
# sealed file; "reorder" lists the sealed segments (by index) to keep, in order.
NEGATIVE: list[dict[str, Any]] = [
    {"name": "bad magic", "edit": {"flip": [0, 1]}},
    {"name": "version 0", "edit": {"flip": [8, 1]}},
    {"name": "algorithm 3", "edit": {"flip": [9, 2]}},
    {"name": "segment size above the maximum", "edit": {"flip": [10, 1]}},
    {"name": "segment size changed (4096 to 69632)", "edit": {"flip": [11, 1]}},
    {"name": "salt changed", "edit": {"flip": [14, 128]}},
    {"name": "nonce prefix changed", "edit": {"flip": [46, 1]}},
    {"name": "key id changed", "edit": {"flip": [55, 1]}},
    {"name": "last context byte changed", "edit": {"flip": [HEADER_SIZE - 1, 1]}},
    {"name": "file ends inside the header", "edit": {"truncate": HEADER_SIZE - 1}},
    {"name": "header only", "edit": {"truncate": HEADER_SIZE}},
    {"name": "last segment dropped", "edit": {"reorder": [0]}},
    {"name": "segments swapped", "edit": {"reorder": [1, 0]}},
    {"name": "first segment duplicated", "edit": {"reorder": [0, 0, 1]}},
    {"name": "last segment duplicated", "edit": {"reorder": [0, 1, 1]}},
    {"name": "one byte appended", "edit": {"append": "00"}},
    {
        "name": "last tag cut short",
        "edit": {"truncate": HEADER_SIZE + SEALED_SEGMENT + 15},
    },
    {"name": "body bit flipped", "edit": {"flip": [HEADER_SIZE + 100, 4]}},
    {
        "name": "tag bit flipped",
        "edit": {"flip": [HEADER_SIZE + SEALED_SEGMENT - 1, 1]},
    },
]


def build() -> dict[str, Any]:
    return {
        "description": (
            "envelope-mq sealed file format v1 (docs/file-format.md). Bytes are hex. "
            "plaintext: plaintext_length bytes where byte i is i mod 251. Positive "
            "vectors: sealing that plaintext with data_key, salt and nonce_prefix "
            "gives exactly `sealed`; file_key and header_sha256 are shown for "
            "implementers. "
            "Negative vectors: the named edit of the positive vector `base` must be "
            "refused by a reader that holds the right data key. Edits: flip [offset, "
            "xor mask]; truncate to a length; append hex; reorder: keep these sealed "
            "segments (indices into the original), in this order, after the header."
        ),
        "generator": "tests/vectors/generate_file_v1.py",
        "vectors": POSITIVE,
        "negative": [{**n, "base": BASE, "fail": True} for n in NEGATIVE],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if args.check:
        same = OUT.read_text(encoding="utf-8") == text
        print("file_v1.json is up to date" if same else "file_v1.json differs")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
