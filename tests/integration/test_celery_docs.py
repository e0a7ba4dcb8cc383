"""docs/celery.md stays true: its tasks module and client run against a real worker.

The tasks block is written as ``tasks.py``; ``celery -A tasks worker`` runs
it and the client block is run as a script beside it, on the real broker and
a KMS emulator whose one principal may both generate and decrypt data keys.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_kit import throwaway_queue
from command_kit import clean_env

from envelope_mq.testing.kms import Credentials, emulator_seed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "celery.md"
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
PIKA_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def block(mark: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- example: {mark} -->\n```python\n(.*?)^```$", text, re.S | re.M
    )
    assert found, mark
    return found.group(1)


@pytest.fixture
def kms_env() -> Iterator[dict[str, str]]:
    from envelope_mq.kms_emulator import Emulator

    both = Credentials(f"emq-celery-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    key_id = str(uuid.uuid4())
    seed = emulator_seed(key_id, "alias/celery-docs", both, both)
    seed["principals"] = [
        {**seed["principals"][0], "actions": ["GenerateDataKey", "Decrypt"]}
    ]
    with Emulator(seed=seed, auth="strict", port=0) as emulator:
        yield {
            "KMS_ENDPOINT": emulator.endpoint,
            "KMS_KEY_ID": key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": both.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": both.access_key_secret,
        }


@pytest.fixture
def queue() -> Iterator[str]:
    with throwaway_queue(PIKA_URL, "emq-celery-docs") as name:
        yield name


def test_the_celery_example_runs_sealed(
    kms_env: dict[str, str], queue: str, tmp_path: Path
) -> None:
    (tmp_path / "tasks.py").write_text(block("celery-tasks"), encoding="utf-8")
    (tmp_path / "client.py").write_text(block("celery-client"), encoding="utf-8")
    env = {
        **clean_env(),
        **kms_env,
        "CELERY_BROKER_URL": BROKER,
        "BILLING_QUEUE": queue,
        "PYTHONPATH": str(tmp_path),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-P", "solo", "-n", f"{queue}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "client.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "charged alice 1250 cents\n"
