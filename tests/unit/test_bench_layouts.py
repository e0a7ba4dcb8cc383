"""The header-layout bench's candidates: each carries the metadata it claims to,
and the section is opt-in."""

from __future__ import annotations

import argparse
import base64
import struct

import pytest

from envelope_mq.bench import cli
from envelope_mq.bench.layouts import (
    BASELINE,
    BYTE_ARRAY,
    IN_BODY,
    LAYOUTS,
    LONG_STRING,
    NESTED,
    PERSISTENCE_ONLY,
    REGION,
    V1,
    WRAPPED_ONLY,
    layout_properties,
    v2_blob,
)

KEY_ID = "key-6f1c1d2e-0b7a-4c8e"
BLOB = bytes(range(96))
WRAPPED = base64.b64encode(BLOB).decode()
CONTEXT = '{"app":"x"}'
BODY = b"b" * 1052


def parse_blob(blob: bytes) -> tuple[int, int, str, list[tuple[str, str, bytes]]]:
    version, alg, n = struct.unpack_from(">BBH", blob)
    at = 4
    context = blob[at : at + n].decode()
    at += n
    count = blob[at]
    at += 1
    copies = []
    for _ in range(count):
        n = blob[at]
        region = blob[at + 1 : at + 1 + n].decode()
        at += 1 + n
        n = blob[at]
        key = blob[at + 1 : at + 1 + n].decode()
        at += 1 + n
        (n,) = struct.unpack_from(">H", blob, at)
        copies.append((region, key, blob[at + 2 : at + 2 + n]))
        at += 2 + n
    assert at == len(blob)
    return version, alg, context, copies


def test_the_v2_blob_is_the_specified_layout() -> None:
    assert parse_blob(v2_blob(KEY_ID, WRAPPED, CONTEXT)) == (
        2,
        1,
        CONTEXT,
        [(REGION, KEY_ID, BLOB)],
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_carries_the_metadata_or_none(layout: str) -> None:
    headers, body = layout_properties(layout, KEY_ID, WRAPPED, CONTEXT, BODY)
    blob = v2_blob(KEY_ID, WRAPPED, CONTEXT)
    if layout in (BASELINE, PERSISTENCE_ONLY):
        assert (headers, body) == (None, BODY)
    elif layout == WRAPPED_ONLY:
        # The floor: the raw wrapped key, nothing else.
        assert headers == {"x-emq": BLOB}
        assert body == BODY
    elif layout == V1:
        assert headers is not None
        assert headers["x-emq-data-key"] == WRAPPED
        assert len(headers) == 5
        assert body == BODY
    elif layout == LONG_STRING:
        assert headers == {"x-emq": base64.b64encode(blob).decode()}
    elif layout == BYTE_ARRAY:
        assert headers == {"x-emq": blob}
    elif layout == NESTED:
        assert headers is not None
        assert set(headers) == {"x-emq"}
    else:
        assert layout == IN_BODY
        assert headers is None
        assert body == struct.pack(">H", len(blob)) + blob + BODY


def test_layouts_run_only_when_asked_for() -> None:
    default = argparse.Namespace(only=None, layouts=False)
    assert "layouts" not in cli._sections(default)
    assert "throughput" in cli._sections(default)
    assert "layouts" in cli._sections(argparse.Namespace(only=None, layouts=True))
    only = argparse.Namespace(only=["layouts"], layouts=False)
    assert cli._sections(only) == {"layouts"}
