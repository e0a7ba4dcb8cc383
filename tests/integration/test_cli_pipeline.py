"""``envelope-mq produce`` and ``envelope-mq consume`` as separate processes."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from command_kit import (
    ENVELOPE_MQ,
    TIMEOUT,
    env_for,
    finish,
    produce,
    start_consume,
    topology_args,
)
from envelope_mq.shared.config import Settings

pytestmark = pytest.mark.integration


def line_reader(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        # The stream may be closed under us when the test ends: that ends it.
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_produced_lines_come_out_of_consume_as_json(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
) -> None:
    lines = [f"line {i} ünïcode" for i in range(40)]
    consumer = start_consume(emq_consumer_settings, emq_amqp_names, "--count", "40")
    try:
        produce(
            emq_producer_settings,
            emq_amqp_names,
            lines,
            "--context",
            "tenant=a",
            "--content-type",
            "text/plain",
        )
        code, out, err = finish(consumer)
    finally:
        consumer.kill()

    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["body"] for r in records) == sorted(lines)
    assert len({r["message_id"] for r in records}) == 40
    assert all(r["context"] == {"tenant": "a"} for r in records)
    assert all(r["content_type"] == "text/plain" for r in records)
    assert all(isinstance(r["timestamp"], int) for r in records)
    assert "40 message(s)" in err


def test_sigterm_stops_consume_cleanly(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
) -> None:
    with start_consume(emq_consumer_settings, emq_amqp_names) as consumer:
        try:
            assert consumer.stdout is not None
            assert consumer.stderr is not None
            received = line_reader(consumer.stdout)
            produce(emq_producer_settings, emq_amqp_names, [f"m{i}" for i in range(20)])
            bodies = {
                json.loads(received.get(timeout=TIMEOUT))["body"] for _ in range(20)
            }
            consumer.send_signal(signal.SIGTERM)
            code = consumer.wait(timeout=30)
            err = consumer.stderr.read()
        finally:
            consumer.kill()

    assert code == 0, err
    assert bodies == {f"m{i}" for i in range(20)}
    assert "20 message(s)" in err
    # every message was acknowledged before the exit: a new consumer finds none
    again = start_consume(emq_consumer_settings, emq_amqp_names, "--count", "1")
    try:
        produce(emq_producer_settings, emq_amqp_names, ["after"])
        code, out, _err = finish(again)
    finally:
        again.kill()
    assert [json.loads(x)["body"] for x in out.splitlines()] == ["after"]


def test_quarantine_replay_command_returns_messages_to_the_queue(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
) -> None:
    produce(
        emq_producer_settings, emq_amqp_names, ["a1", "a2", "a3"], "--context", "t=a"
    )
    produce(emq_producer_settings, emq_amqp_names, ["b1"], "--context", "t=b")
    # A consumer that only accepts t=b quarantines the t=a messages.
    picky = start_consume(
        emq_consumer_settings, emq_amqp_names, "--count", "1", "--allow-context", "t=b"
    )
    try:
        code, out, err = finish(picky)
    finally:
        picky.kill()
    assert code == 0, err
    assert [json.loads(x)["body"] for x in out.splitlines()] == ["b1"]

    replay = subprocess.run(
        [ENVELOPE_MQ, "quarantine-replay", *topology_args(emq_amqp_names)],
        env=env_for(emq_consumer_settings),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert "moved 3 message(s)" in replay.stderr

    everyone = start_consume(emq_consumer_settings, emq_amqp_names, "--count", "3")
    try:
        code, out, err = finish(everyone)
    finally:
        everyone.kill()
    assert code == 0, err
    assert sorted(json.loads(x)["body"] for x in out.splitlines()) == ["a1", "a2", "a3"]


def test_consume_writes_to_an_output_file(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: Any,
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.jsonl"
    produce(emq_producer_settings, emq_amqp_names, ["one", "two"])
    consumer = start_consume(
        emq_consumer_settings, emq_amqp_names, "--count", "2", "--output", str(target)
    )
    try:
        code, out, err = finish(consumer)
    finally:
        consumer.kill()
    assert code == 0, err
    assert out == ""
    bodies = [json.loads(x)["body"] for x in target.read_text().splitlines()]
    assert sorted(bodies) == ["one", "two"]


def test_consume_without_kms_credentials_fails_clearly(
    emq_consumer_settings: Settings, emq_amqp_names: Any
) -> None:
    env = env_for(emq_consumer_settings)
    del env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    done = subprocess.run(
        [ENVELOPE_MQ, "consume", *topology_args(emq_amqp_names), "--count", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
