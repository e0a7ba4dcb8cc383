from __future__ import annotations

import ast
from pathlib import Path

from bench_support.passthrough import PassThroughOpener, PassThroughSealer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import InMemoryKeyProvider

from envelope_mq.bench.unsealed import PASSTHROUGH, Unsealed, load_unsealed

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


def test_the_pass_through_lives_outside_every_package() -> None:
    assert (ROOT / PASSTHROUGH).is_file()
    for package in ("shared", "producer", "consumer", "kms_emulator", "src"):
        assert not list((ROOT / package).rglob("passthrough*")), package


def test_the_bench_loads_the_pass_through_from_a_checkout() -> None:
    unsealed = load_unsealed()
    assert isinstance(unsealed, Unsealed)
    assert issubclass(unsealed.publisher_class, EncryptedPublisher)
    assert unsealed.publisher_class._sealer_class.__name__ == "PassThroughSealer"
    assert EncryptedPublisher._sealer_class is Sealer  # the seam stays private


def test_without_a_checkout_the_bench_says_why_sealing_off_is_not_measured(
    tmp_path: Path,
) -> None:
    why = load_unsealed(tmp_path)
    assert isinstance(why, str)
    assert "not measured" in why
    assert str(PASSTHROUGH) in why


def test_nothing_in_the_packages_imports_the_pass_through() -> None:
    importers = []
    for package in ("shared", "producer", "consumer", "kms_emulator", "src"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and ("passthrough" in node.module)
                ):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []
