"""Commands killed with SIGKILL mid-stream and started again (tests/ is on sys.path).

The crash scenarios run real processes (``envelope-mq consume``, ``envelope-mq
stage``, an asyncio consumer script), kill them while messages flow and start
new ones; a consumer writes JSON lines to a file of its own, which
:class:`OutputTail` books in the ledger as the file grows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from command_kit import ENVELOPE_MQ_MODULE
from envelope_mq.shared.amqp import Topology
from scenario_kit import (
    PATIENCE,
    QuarantineWatcher,
    confirm_all,
    scenario_publisher,
    settle,
    stream_in_background,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger

__all__ = [
    "KillableProcess",
    "OutputTail",
    "Processes",
    "consumer_env",
    "consumers_killed_while_publishing",
    "kill_consumers_mid_stream",
    "wait_until",
]


class KillableProcess:
    """One command in a process of its own, its stderr in ``log``."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            list(argv),
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


class Processes:
    """The processes one test started; :meth:`reap` kills those still running,
    so that a failed test leaves none behind."""

    def __init__(self) -> None:
        self.started: list[KillableProcess] = []

    def start(
        self, argv: Sequence[str], env: dict[str, str], log: Path
    ) -> KillableProcess:
        """Start ``argv``, its stderr in ``log``."""
        started = KillableProcess(argv, env, log)
        self.started.append(started)
        return started

    def consume(
        self, env: dict[str, str], args: Sequence[str], out: Path
    ) -> KillableProcess:
        """``envelope-mq consume ARGS --output OUT``, its stderr beside ``out``."""
        argv = [*ENVELOPE_MQ_MODULE, "consume", *args, "--output", str(out)]
        return self.start(argv, env, out.with_suffix(".stderr"))

    def reap(self) -> None:
        """SIGKILL every process still running."""
        for started in self.started:
            if started.process.poll() is None:
                started.kill()


def consumer_env(kms: KmsFixture, rabbitmq_url: str) -> dict[str, str]:
    """This environment, with the broker, the emulator and the consumer's keys."""
    return {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "KMS_ENDPOINT": kms.endpoint,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": kms.consumer.access_key_id,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": kms.consumer.access_key_secret,
    }


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


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

    def wait_handled(self, directory: Path, count: int, what: str) -> None:
        """Book every ``*.jsonl`` in ``directory`` until ``count`` are settled."""

        def all_handled() -> bool:
            self.poll(*directory.glob("*.jsonl"))
            return self._ledger.settled >= count

        wait_until(all_handled, what)


def kill_consumers_mid_stream(
    start: Callable[[Path], KillableProcess],
    tail: OutputTail,
    ledger: MessageLedger,
    directory: Path,
    *,
    kills: int,
    lines_before_kill: int,
    after_kill: Callable[[], None] | None = None,
) -> KillableProcess:
    """Start a consumer writing to ``directory/run-N.jsonl`` and SIGKILL it once it
    wrote ``lines_before_kill`` lines, ``kills`` times (``after_kill`` runs after
    each); then start the last one (``run-last.jsonl``) and return it, running."""
    for run in range(1, kills + 1):
        out = directory / f"run-{run}.jsonl"
        consumer = start(out)
        wait_until(
            lambda out=out: tail.lines_in(out) >= lines_before_kill,  # type: ignore[misc]
            f"consumer {run} to write {lines_before_kill} lines",
        )
        consumer.kill()
        ledger.fault("consumer SIGKILLs", 1)
        if after_kill is not None:
            after_kill()
    return start(directory / "run-last.jsonl")


def consumers_killed_while_publishing(
    kms: KmsFixture,
    rabbitmq_url: str,
    topology: Topology,
    ledger: MessageLedger,
    start: Callable[[Path], KillableProcess],
    directory: Path,
    *,
    messages: int,
    kills: int,
    lines_before_kill: int,
) -> tuple[list[str], int]:
    """Publish ``messages`` at about 1,000 a second (so the kills land while
    messages still arrive) while :func:`kill_consumers_mid_stream` kills the
    consumers ``start`` starts; the last one handles the rest and is stopped
    with SIGTERM. The publishes' errors and the last consumer's exit code."""
    tail = OutputTail(ledger)
    publisher = scenario_publisher(kms, [rabbitmq_url], topology)
    producer, sent = stream_in_background(
        publisher,
        ledger,
        count=messages,
        size=300,
        tag="kill",
        pause_every=100,
        pause=0.1,
    )
    with QuarantineWatcher([rabbitmq_url], topology, ledger), publisher:
        producer.start()
        final = kill_consumers_mid_stream(
            start,
            tail,
            ledger,
            directory,
            kills=kills,
            lines_before_kill=lines_before_kill,
        )
        producer.join(PATIENCE)
        errors = confirm_all(publisher, ledger, sent)
        tail.wait_handled(directory, messages, "every message to be handled")
        settle(ledger, timeout=5)
        return errors, final.terminate()
