"""Sealed files: streaming seal and unseal beside one raw AES-GCM call.

Issue 7's speed line: sealing and unsealing a large file must run at half the
throughput of a single raw AES-256-GCM call over the same bytes, or better;
the Python cost per 64 KiB segment must stay small next to the cipher. The
file is held in memory and written to a sink that only counts, so that a
disk does not hide either side; the raw call gets the same bytes in one
buffer and returns its whole output.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.progress import Progress
from envelope_mq.shared.kms import DataKey
from envelope_mq.shared.sealed_file import read_header, seal_with_key, unseal_with_key

if TYPE_CHECKING:  # collections.abc.Buffer is Python 3.12+
    from typing_extensions import Buffer

__all__ = ["run_files"]

_MIB = 1024 * 1024


class _Sink:
    """A writer that keeps nothing: the file's destination, minus the disk."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Buffer, /) -> int:
        size = memoryview(data).nbytes
        self.size += size
        return size


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_files(report: Report, rounds: int, size: int) -> None:
    """Measure seal, unseal and raw AES-GCM over ``size`` bytes; add to ``report``."""
    data = os.urandom(size)
    key = os.urandom(32)
    data_key = DataKey(plaintext=key, wrapped="bench-wrapped-key", key_id="bench")
    context = {"app": "envelope-mq-bench"}
    aead = AESGCM(key)

    sealed_buffer = io.BytesIO()
    seal_with_key(io.BytesIO(data), sealed_buffer, data_key, context)
    sealed = sealed_buffer.getvalue()
    del sealed_buffer
    check = io.BytesIO()
    source = io.BytesIO(sealed)
    unseal_with_key(source, check, read_header(source), key)
    if check.getvalue() != data:
        raise RuntimeError("the sealed file round trip changed the plaintext")
    del check

    def raw() -> None:
        aead.encrypt(os.urandom(12), data, None)

    def seal() -> None:
        seal_with_key(io.BytesIO(data), _Sink(), data_key, context)

    def unseal() -> None:
        source = io.BytesIO(sealed)
        unseal_with_key(source, _Sink(), read_header(source), key)

    cases = {"raw AES-256-GCM, one call": raw, "seal": seal, "unseal": unseal}
    names = list(cases)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    with Progress(
        f"sealed file {size // _MIB} MiB", rounds * len(names), announce=True
    ) as bar:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = _timed(cases[name])
                speeds[name].append(rate(size, seconds) / _MIB)
                bar.advance()
    section = f"sealed file, {size // _MIB} MiB in memory"
    for name in names:
        report.add(section, name, median(speeds[name]), "MiB/s", rounds=speeds[name])
    raw_speeds = speeds[names[0]]
    for name in ("seal", "unseal"):
        ratios = round_ratios(speeds[name], raw_speeds)
        report.add(section, f"{name} ÷ raw AES-GCM", median(ratios), "x", rounds=ratios)
        report.check(
            f"sealed file {name} throughput ÷ one raw AES-GCM call (issue 7)",
            median(ratios),
            ">=",
            0.5,
            "x",
        )
