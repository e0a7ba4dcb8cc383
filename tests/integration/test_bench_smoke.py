"""The benchmark's smoke run: every section runs end to end, so it cannot rot.

`--messages 500 --rounds 1`, without --check: the figures of a run this short
on a shared CI machine mean nothing, and no figure is asserted here. The
time-boxed sections are shortened too (latency 2 s, emulator load 1 s per
action, an 8 MiB file) to keep the suite quick; their code paths are the same.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECTIONS = (
    "throughput",
    "latency",
    "KMS economy",
    "crypto only",
    "KMS emulator",
    "asyncio",
    "faststream",
    "celery",
    "stream replay",
    "stage",
)


def test_bench_smoke_run_reports_every_section(
    emq_rabbitmq_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "bench.json"
    command = [sys.executable, "-c", "from envelope_mq.shared.cli import main; main()"]
    command += ["bench", "--messages", "500", "--rounds", "1", "--duration", "2"]
    command += ["--emulator-seconds", "1", "--file-size", "8", "--json", str(results)]
    command += ["--celery-tasks", "200", "--replay-events", "2000"]
    command += ["--replay-keys", "20"]
    done = subprocess.run(
        command,
        env={**os.environ, "RABBITMQ_URL": emq_rabbitmq_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(results.read_text(encoding="utf-8"))
    sections = {f["section"] for f in document["figures"]}
    for expected in (*SECTIONS, "memory", "sealed file"):
        assert any(s.startswith(expected) for s in sections), expected
        assert expected in done.stdout
    by_name = {(f["section"], f["name"]): f for f in document["figures"]}
    for side in ("plain pika", "envelope-mq", "envelope-mq, sealing off"):
        for kind in ("classic", "quorum"):
            for verb in ("publish", "consume"):
                figure = by_name[(f"throughput: {kind}, {verb}, msg/s", side)]
                assert len(figure["rounds"]) == 1
                assert figure["value"] > 0
    for kind in ("classic", "quorum"):
        section = f"throughput: {kind}, publish, msg/s"
        assert (
            by_name[(section, "pika, plain messages, pipelined confirms")]["value"] > 0
        )
    decrypts = by_name[
        ("stream replay", "KMS Decrypt calls per replay (emulator count)")
    ]
    assert decrypts["value"] == 20  # one per data key, counted by the emulator
    latency = next(f for f in document["figures"] if f["name"] == "messages timed")
    assert latency["value"] == 2000
    for side in ("plain aio-pika, confirms", "envelope-mq asyncio"):
        for section in ("asyncio: publish, msg/s", "asyncio: consume, msg/s"):
            assert by_name[(section, side)]["value"] > 0
    names = [t["name"] for t in document["targets"]]
    assert len(names) == 23, names
    for target in document["targets"]:
        assert target["passed"] in (True, False)
    # Only the AWS Encryption SDK may be missing (an optional extra).
    missing = [
        f["name"]
        for f in document["figures"]
        if f["value"] is None or not math.isfinite(f["value"])
    ]
    assert set(missing) <= {"AWS Encryption SDK"}
    # Progress went to stderr, never into the table on stdout.
    assert "done in" in done.stderr
    assert "done in" not in done.stdout
