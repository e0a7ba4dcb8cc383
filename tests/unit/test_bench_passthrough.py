from __future__ import annotations

import ast
from pathlib import Path

from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import InMemoryKeyProvider

from envelope_mq.bench.passthrough import PassThroughOpener, PassThroughSealer

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = {"app": "bench"}


def test_production_publisher_seals_with_the_real_sealer() -> None:
    assert EncryptedPublisher._sealer_class is Sealer


def test_pass_through_sealer_sends_plaintext_under_real_sized_headers() -> None:
    cache = DataKeyCache(InMemoryKeyProvider())
    meta = MessageMeta("m-1", 1_700_000_000)
    real = Sealer(cache, "master", CONTEXT).seal(b"hello", meta)
    passed = PassThroughSealer(cache, "master", CONTEXT).seal(b"hello", meta)
    assert passed.body == b"hello"
    assert real.body != b"hello"
    assert passed.headers == real.headers  # same names, values and sizes
    assert passed.meta == meta


def test_pass_through_opener_returns_the_body_as_plaintext() -> None:
    opener = PassThroughOpener("master", CONTEXT)
    meta = MessageMeta("m-1", 1_700_000_000)
    header = opener.parse({wire.VERSION_HEADER: "anything"})
    opened = opener.open(b"as delivered", header, meta)
    assert opened.plaintext == b"as delivered"
    assert dict(opened.context) == CONTEXT


def test_only_the_benchmark_imports_the_pass_through() -> None:
    importers = []
    for package in ("shared", "producer", "consumer", "kms_emulator", "envelope_mq"):
        for path in (ROOT / package).rglob("*.py"):
            if path.parent.name == "bench" and path.parent.parent.name == "envelope_mq":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and ("passthrough" in node.module)
                ):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []
