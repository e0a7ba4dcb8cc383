"""Crypto only: seal + open per message, envelope-mq beside the AWS Encryption SDK
and raw AES-GCM, for 1 KiB and 64 KiB messages.

- envelope-mq: :class:`shared.envelope.Sealer` and :class:`~shared.envelope.Opener`
  (parse and open) on a key-cache hit, each message with its own message_id;
- the AWS Encryption SDK (the optional ``bench`` extra): its caching materials
  manager over a local raw AES-256 wrapping key, the unsigned committing suite
  ``AES_256_GCM_HKDF_SHA512_COMMIT_KEY``, default framing, the same context;
- raw AES-256-GCM: one ``AESGCM`` object, a fresh nonce, encrypt then decrypt.
  The floor: no key management, no associated data, nothing to parse.

envelope-mq runs in wire format v2 (its default) and, beside it, v1. The
cases run interleaved, in a rotating order, round after round, and within a
round in ten slices that take turns, so that a burst of load from another
process falls on every case of the round alike.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, round_ratios
from envelope_mq.progress import Progress
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider

__all__ = ["SIZES", "run_crypto"]

SIZES = (1024, 64 * 1024)
CONTEXT = {"app": "envelope-mq-bench"}
ENVELOPE, ESDK, RAW = "envelope-mq", "AWS Encryption SDK", "raw AES-256-GCM"
ENVELOPE_V1 = "envelope-mq, wire v1"
_MEASURE_SECONDS = 0.2  # per case and round: long enough for a stable mean
# Each round's time per case is taken in this many slices, the cases taking
# turns slice by slice: on a shared machine a burst of someone else's load
# then hits every case of the round alike, not just the one it fell on.
_SLICES = 10
# envelope-mq's seal + open of 1 KiB on a cache hit, at most this many times
# raw AES-256-GCM encrypt + decrypt of the same bytes (issue 17).
FLOOR_RATIO_LIMIT = 3.5
_METAS = 1024  # distinct message properties cycled through

# Runs one case's seal + open ``n`` times.
Case = Callable[[int], None]


@dataclass(frozen=True)
class CryptoResult:
    """Median µs per seal + open, by size and implementation."""

    micros: dict[int, dict[str, float]]


def envelope_case(size: int, wire_version: int = 2) -> Case:
    """envelope-mq: Sealer.seal, then Opener.parse and Opener.open, on a cache hit."""
    provider = InMemoryKeyProvider()
    sealer = Sealer(
        DataKeyCache(provider),
        "bench-master-key",
        CONTEXT,
        wire_version=wire_version,
    )
    opener = Opener(UnwrapCache(provider))
    plaintext = os.urandom(size)
    now = int(time.time())
    metas = [
        MessageMeta(str(uuid.uuid4()), now, "application/octet-stream")
        for _ in range(_METAS)
    ]

    def run(n: int) -> None:
        for i in range(n):
            meta = metas[i % _METAS]
            sealed = sealer.seal(plaintext, meta)
            opener.open(sealed.body, opener.parse(sealed.headers), meta)

    # The one KMS call per side happens here, outside any timing; and the
    # round trip is checked once, so that a broken recipe cannot look fast.
    sealed = sealer.seal(plaintext, metas[0])
    opened = opener.open(sealed.body, opener.parse(sealed.headers), metas[0])
    if opened.plaintext != plaintext:
        raise RuntimeError("the envelope round trip changed the plaintext")
    return run


def raw_case(size: int) -> Case:
    """Raw AES-256-GCM: encrypt and decrypt under a prebuilt key object."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    plaintext = os.urandom(size)

    def run(n: int) -> None:
        for _ in range(n):
            nonce = os.urandom(12)
            aead.decrypt(nonce, aead.encrypt(nonce, plaintext, None), None)

    return run


def esdk_case(size: int) -> Case | None:
    """The AWS Encryption SDK with a caching CMM and a raw AES key; None if absent."""
    try:
        from envelope_mq.bench.esdk import esdk_round_trip
    except ImportError:
        return None
    return esdk_round_trip(os.urandom(size), CONTEXT)


def _calibrate(case: Case) -> int:
    """How many iterations take about ``_MEASURE_SECONDS``."""
    n = 1
    while True:
        started = time.perf_counter()
        case(n)
        elapsed = time.perf_counter() - started
        if elapsed >= _MEASURE_SECONDS / 10:
            return max(1, int(n * _MEASURE_SECONDS / elapsed))
        n *= 4


def _time_round(cases: dict[str, Case], counts: dict[str, int]) -> dict[str, float]:
    """Microseconds per iteration of each case, the cases taking turns by slice."""
    spent = dict.fromkeys(cases, 0.0)
    done = dict.fromkeys(cases, 0)
    for _ in range(_SLICES):
        for name, case in cases.items():
            n = max(1, counts[name] // _SLICES)
            started = time.perf_counter()
            case(n)
            spent[name] += time.perf_counter() - started
            done[name] += n
    return {name: spent[name] / done[name] * 1e6 for name in cases}


def run_crypto(
    report: Report, rounds: int, wire_versions: tuple[int, ...] = (2, 1)
) -> CryptoResult:
    """Measure every case for every size; add figures and targets to ``report``."""
    micros: dict[int, dict[str, float]] = {}
    for size in SIZES:
        cases: dict[str, Case] = {ENVELOPE: envelope_case(size)}
        if 1 in wire_versions:
            cases[ENVELOPE_V1] = envelope_case(size, wire_version=1)
        cases[RAW] = raw_case(size)
        esdk = esdk_case(size)
        if esdk is not None:
            cases[ESDK] = esdk
        counts = {name: _calibrate(case) for name, case in cases.items()}
        samples: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        label = f"crypto {size // 1024} KiB"
        with Progress(label, rounds * len(names), announce=True) as bar:
            for r in range(rounds):
                shift = r % len(names)  # rotate who goes first
                order = names[shift:] + names[:shift]
                timed = _time_round({name: cases[name] for name in order}, counts)
                for name in names:
                    samples[name].append(timed[name])
                    bar.advance()
        section = f"crypto only, {size // 1024} KiB: seal + open per message"
        micros[size] = {}
        for name in names:
            micros[size][name] = median(samples[name])
            report.add(section, name, micros[size][name], "µs", rounds=samples[name])
        if esdk is None:
            report.add(
                section,
                ESDK,
                float("nan"),
                "µs",
                note="not installed: pip install 'envelope-mq[bench]'",
            )
        else:
            ratios = round_ratios(samples[ESDK], samples[ENVELOPE])
            micros[size]["esdk_ratio"] = median(ratios)
            report.add(
                section,
                "AWS Encryption SDK ÷ envelope-mq (time)",
                median(ratios),
                "x",
                rounds=ratios,
            )
        floor = round_ratios(samples[ENVELOPE], samples[RAW])
        micros[size]["floor_ratio"] = median(floor)
        report.add(
            section,
            "envelope-mq ÷ raw AES-GCM (time)",
            median(floor),
            "x",
            rounds=floor,
        )
        if ENVELOPE_V1 in samples:
            floor_v1 = round_ratios(samples[ENVELOPE_V1], samples[RAW])
            report.add(
                section,
                f"{ENVELOPE_V1} ÷ raw AES-GCM (time)",
                median(floor_v1),
                "x",
                rounds=floor_v1,
            )
    small = micros[SIZES[0]]
    report.check(
        "seal + open of 1 KiB on a cache hit", small[ENVELOPE], "<=", 20.0, "µs"
    )
    report.check(
        "seal + open of 1 KiB on a cache hit ÷ raw AES-256-GCM (time)",
        small["floor_ratio"],
        "<=",
        FLOOR_RATIO_LIMIT,
        "x",
    )
    report.check(
        "envelope-mq vs AWS Encryption SDK, 1 KiB (times faster)",
        small.get("esdk_ratio", float("nan")),
        ">=",
        10.0,
        "x",
    )
    return CryptoResult(micros)
