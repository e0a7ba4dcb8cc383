"""docs/tutorial.md stays true: every shell block in it runs, in order, and passes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_kit import throwaway_queue

pytestmark = pytest.mark.integration

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
SKIP_MARKER = "<!-- tutorial-test: skip -->"
DOCUMENTED_PORT = 8600
DOCUMENTED_QUEUE = "lab-messages"
DOCUMENTED_BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def shell_blocks(text: str) -> tuple[list[str], list[str]]:
    """The ```sh blocks to run, and those marked to skip."""
    run, skipped = [], []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        marked = bool(before) and before[-1].strip() == SKIP_MARKER
        (skipped if marked else run).append(match.group(1))
    return run, skipped


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_tutorial_has_runnable_blocks_and_few_skipped_ones() -> None:
    run, skipped = shell_blocks(TUTORIAL.read_text(encoding="utf-8"))
    assert len(run) >= 10
    assert len(skipped) <= 2
    text = "\n".join(run)
    for command in ("kms-emulator", "kms list-keys", "kms describe-key", "kms encrypt"):
        assert command in text
    for command in ("kms decrypt", "kms generate-data-key", "seal", "unseal"):
        assert command in text
    assert "envelope-mq produce" in text
    assert "envelope-mq consume" in text


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    # The tutorial's queues are durable, as a reader's would be; ours go away.
    with throwaway_queue(emq_rabbitmq_url, DOCUMENTED_QUEUE) as name:
        yield name


def test_every_command_of_the_tutorial_runs(
    tmp_path: Path, emq_rabbitmq_url: str, queue: str
) -> None:
    run, _ = shell_blocks(TUTORIAL.read_text(encoding="utf-8"))
    script = "set -euo pipefail\n" + "\n".join(run)
    port = DOCUMENTED_PORT if port_is_free(DOCUMENTED_PORT) else free_port()
    script = script.replace(str(DOCUMENTED_PORT), str(port))
    script = script.replace(DOCUMENTED_QUEUE, queue)
    script = script.replace(DOCUMENTED_BROKER, emq_rabbitmq_url)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    log = tmp_path / "tutorial.log"
    # A file, not a pipe: a background process must not keep us waiting.
    with log.open("wb") as sink:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the emulator joins this group: we stop it all
        )
        try:
            shell.wait(timeout=240)
        finally:
            # Whatever the outcome, nothing the tutorial started outlives the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait()
    output = log.read_text(encoding="utf-8", errors="replace")
    assert shell.returncode == 0, output
    for line in (
        '"Plaintext": "hello, KMS"',
        '"Plaintext": "hello, aliyun"',
        "Code: InvalidParameter",
        "refused, exit status 1",
        "identical",
        "a note for later",
        "no partial output",
        '"context":{"purpose":"lab"}',
        "received and decrypted",
    ):
        assert line in output, output
    assert "lab-secret" not in output
