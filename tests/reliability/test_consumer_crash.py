"""Consumer processes killed with SIGKILL mid-stream, three times, and restarted.

The consumers are real ``envelope-mq consume`` processes writing JSON lines to
a file; the ledger reads the files. A killed consumer leaves its unacknowledged
messages to the broker, which delivers them to the next one: duplicates are
expected and counted, losses are not allowed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scenario_kit import (
    PATIENCE,
    QuarantineWatcher,
    confirm_all,
    scenario_publisher,
    scenario_topology,
    settle,
    stream_in_background,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

MESSAGES = 8_000
KILLS = 3
LINES_BEFORE_KILL = 1_000


class OutputTail:
    """Books the JSON lines of consumer output files in the ledger as they grow."""

    def __init__(self, ledger: MessageLedger) -> None:
        self._ledger = ledger
        self._offsets: dict[Path, int] = {}
        self.lines: dict[Path, int] = {}

    def lines_in(self, path: Path) -> int:
        """Book what ``path`` gained since the last look; its line count."""
        self.poll(path)
        return self.lines.get(path, 0)

    def poll(self, *paths: Path) -> None:
        """Book the complete lines that ``paths`` gained since the last look."""
        for path in paths:
            if not path.exists():
                continue
            with path.open("rb") as stream:
                stream.seek(self._offsets.get(path, 0))
                data = stream.read()
            # Only complete lines: a line is written and flushed before its ack.
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                self._ledger.handled(record["message_id"], record["body"].encode())
                self.lines[path] = self.lines.get(path, 0) + 1


class ConsumerProcess:
    """One ``envelope-mq consume`` process writing to its own file."""

    def __init__(self, env: dict[str, str], args: list[str], out: Path) -> None:
        self.output = out
        self._log = out.with_suffix(".stderr").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "envelope_mq",
                "consume",
                *args,
                "--output",
                str(out),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, nothing acknowledged."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(PATIENCE)
        self._log.close()

    def terminate(self) -> int:
        """SIGTERM: the graceful stop; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(PATIENCE)
        finally:
            self._log.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for proc in started:  # a failed test must not leave consumers behind
        if proc.process.poll() is None:
            proc.kill()


def test_consumers_killed_three_times_lose_nothing(
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
    tmp_path: Path,
    processes: list[ConsumerProcess],
) -> None:
    ledger = MessageLedger("consumer SIGKILLed 3 times mid-stream, restarted")
    # The CLI declares the queue with no extra arguments, so we do too; the
    # emq_amqp_names fixture deletes it afterwards.
    topology = scenario_topology(
        emq_amqp_names.queue, emq_amqp_names.exchange, expires=False
    )
    env = {
        **os.environ,
        "RABBITMQ_URL": emq_rabbitmq_url,
        "KMS_ENDPOINT": emq_kms.endpoint,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": emq_kms.consumer.access_key_id,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": emq_kms.consumer.access_key_secret,
    }
    args = ["--queue", topology.queue, "--exchange", topology.exchange]
    args += ["--prefetch", "200"]
    tail = OutputTail(ledger)

    publisher = scenario_publisher(emq_kms, [emq_rabbitmq_url], topology)
    # About 1,000 messages/s, so the kills land while messages still arrive.
    producer, sent = stream_in_background(
        publisher,
        ledger,
        count=MESSAGES,
        size=300,
        tag="kill",
        pause_every=100,
        pause=0.1,
    )
    with QuarantineWatcher([emq_rabbitmq_url], topology, ledger), publisher:
        producer.start()
        for run in range(1, KILLS + 1):
            out = tmp_path / f"run-{run}.jsonl"
            proc = ConsumerProcess(env, args, out)
            processes.append(proc)
            wait_until(
                lambda out=out: tail.lines_in(out) >= LINES_BEFORE_KILL,  # type: ignore[misc]
                f"consumer {run} to write {LINES_BEFORE_KILL} lines",
            )
            proc.kill()
            ledger.fault("consumer SIGKILLs", 1)
        last = tmp_path / "run-last.jsonl"
        final = ConsumerProcess(env, args, last)
        processes.append(final)
        producer.join(PATIENCE)
        errors = confirm_all(publisher, ledger, sent)

        def all_handled() -> bool:
            tail.poll(*tmp_path.glob("*.jsonl"))
            return ledger.settled >= MESSAGES

        wait_until(all_handled, "every message to be handled")
        settle(ledger, timeout=5)
        assert final.terminate() == 0
    assert errors == []
    report = ledger.check()
    assert report["quarantined"] == {}
    assert report["published"] == MESSAGES
