"""KMS economy: the KMS calls each side made during the run, and the cache hit rates.

Counted twice over: by the emulator, which answers every request (the
producer principal may only GenerateDataKey, the consumer principal only
Decrypt, so the actions tell the sides apart), and by the key caches. The
targets: at most one GenerateDataKey per 2**24 messages or 300 s per (master
key, context), and no more consumer Decrypt calls than distinct data keys seen.
"""

from __future__ import annotations

import time

from envelope_mq.bench.lab import Lab
from envelope_mq.bench.report import Report

__all__ = [
    "DATA_KEY_MAX_AGE",
    "DATA_KEY_MAX_MESSAGES",
    "allowed_generate_calls",
    "run_kms_economy",
]

DATA_KEY_MAX_MESSAGES = 2**24
DATA_KEY_MAX_AGE = 300.0
_SECTION = "KMS economy (throughput and latency sections)"


def allowed_generate_calls(pairs: int, messages: int, seconds: float) -> int:
    """The most GenerateDataKey calls the target allows.

    Every data key but the current one was retired by its message limit or by
    its age, so there can be at most ``messages // 2**24`` of the first kind
    and ``seconds // 300`` of the second, per (key, context) pair.
    """
    return pairs * (
        1 + messages // DATA_KEY_MAX_MESSAGES + int(seconds // DATA_KEY_MAX_AGE)
    )


def _hit_rate(hits: int, misses: int) -> float:
    total = hits + misses
    return 100.0 * hits / total if total else 0.0


def run_kms_economy(report: Report, lab: Lab) -> None:
    """Report both sides' KMS calls and hit rates; check the two targets."""
    counts = lab.kms.emulator.request_count
    generate = int(counts.get("GenerateDataKey", 0))
    decrypt = int(counts.get("Decrypt", 0))
    producer = lab.data_keys.stats()
    consumer = lab.unwrap.stats()
    sealed = producer.hits + producer.misses
    lifetime = time.monotonic() - lab.started
    pairs = 1  # every message of these sections is sealed under one context
    allowed = allowed_generate_calls(pairs, sealed, lifetime)
    keys_seen = sum(lab.keys_seen.values())
    report.add(_SECTION, "messages sealed", sealed, "")
    report.add(
        _SECTION, "producer GenerateDataKey calls (emulator count)", generate, ""
    )
    report.add(
        _SECTION,
        "producer data key cache hit rate",
        _hit_rate(producer.hits, producer.misses),
        "%",
    )
    report.add(_SECTION, "consumer Decrypt calls (emulator count)", decrypt, "")
    report.add(
        _SECTION,
        "distinct data keys the consumers saw",
        keys_seen,
        "",
        note=", ".join(f"{k}: {v}" for k, v in lab.keys_seen.items()),
    )
    report.add(
        _SECTION,
        "throughput consumer unwrap cache hit rate",
        _hit_rate(consumer.hits, consumer.misses),
        "%",
    )
    report.check(
        f"GenerateDataKey calls ({sealed:,} messages, {lifetime:.0f} s, 1 context)",
        generate,
        "<=",
        allowed,
    )
    report.check(
        f"consumer Decrypt calls (≤ the {keys_seen} distinct data keys seen)",
        decrypt,
        "<=",
        keys_seen,
    )
