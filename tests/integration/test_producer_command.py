from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pika.exceptions
import pytest
from broker_kit import queue_depth
from command_kit import ENVELOPE_MQ, env_for
from envelope_mq.shared.config import Settings

from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.integration


def produce(
    settings: Settings, *args: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVELOPE_MQ, "produce", *args],
        input=stdin.decode(),
        env=env_for(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generated_messages_are_published_to_a_declared_queue(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames
) -> None:
    done = produce(
        emq_producer_settings,
        "--queue", emq_amqp_names.queue,
        "--exchange", emq_amqp_names.exchange,
        "--count", "200",
        "--size", "64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "200 of 200 message(s), 12800 bytes" in done.stderr
    urls = emq_producer_settings.rabbitmq_urls
    assert queue_depth(urls, emq_amqp_names.queue) == 200
    assert queue_depth(urls, emq_amqp_names.quarantine_queue) == 0


def test_stdin_lines_are_messages_and_blank_lines_are_skipped(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames
) -> None:
    done = produce(
        emq_producer_settings,
        "--queue", emq_amqp_names.queue,
        "--exchange", emq_amqp_names.exchange,
        "--context", "tenant=a",
        stdin=b"first\n\nsecond\r\nthird",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 of 3 message(s)" in done.stderr
    assert "skipped 1 blank stdin line(s)" in done.stderr  # skipped, not silently
    assert queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_names.queue) == 3


def test_an_unroutable_message_exits_1_and_says_so(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames
) -> None:
    produce(
        emq_producer_settings,
        "--queue", emq_amqp_names.queue,
        "--exchange", emq_amqp_names.exchange,
        "declares the exchange",
    )  # fmt: skip
    done = produce(
        emq_producer_settings,
        "--exchange", emq_amqp_names.exchange,
        "--routing-key", "nobody.listens",
        "lost",
    )  # fmt: skip
    assert done.returncode == 1
    assert "matched no queue" in done.stderr


def test_no_broker_exits_1_with_a_clear_message_and_no_secret(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames
) -> None:
    done = produce(
        emq_producer_settings,
        "--queue", emq_amqp_names.queue,
        "hello",
        RABBITMQ_URL="amqp://guest:hunter2@127.0.0.1:9/%2F",
    )  # fmt: skip
    assert done.returncode == 1
    assert "error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:9" in (
        done.stderr
    )
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr


def test_files_are_messages_one_each_or_one_per_line(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames, tmp_path: Path
) -> None:
    whole, lines = tmp_path / "order.json", tmp_path / "orders.txt"
    whole.write_bytes(b'{"order": 1}\n')
    lines.write_bytes(b"first\n\nthird\n")
    route = ["--queue", emq_amqp_names.queue, "--exchange", emq_amqp_names.exchange]
    done = produce(emq_producer_settings, *route, "--file", str(whole))
    assert done.returncode == 0, done.stderr
    assert "1 of 1 message(s), 13 bytes" in done.stderr
    done = produce(emq_producer_settings, *route, "--file", str(lines), "--lines")
    assert done.returncode == 0, done.stderr
    assert "3 of 3 message(s), 10 bytes" in done.stderr  # the blank line too
    assert queue_depth(emq_producer_settings.rabbitmq_urls, emq_amqp_names.queue) == 4


def test_ctrl_c_says_how_many_were_confirmed_and_exits_130(
    emq_producer_settings: Settings, emq_amqp_names: AmqpNames
) -> None:
    command = [ENVELOPE_MQ, "produce", "--queue", emq_amqp_names.queue]
    command += ["--exchange", emq_amqp_names.exchange]
    producer = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for(emq_producer_settings),
        text=True,
        # A terminal's Ctrl-C: the default disposition, even when this test
        # runs as a background job (whose SIGINT a shell ignores, and produce
        # keeps ignored).
        preexec_fn=_sigint_default,
    )
    try:
        assert producer.stdin is not None
        producer.stdin.write("".join(f"line {n}\n" for n in range(5)))
        producer.stdin.flush()  # then stdin stays open: produce waits for more
        deadline = time.monotonic() + 60
        while depth_or_zero(emq_producer_settings, emq_amqp_names.queue) < 5:
            assert time.monotonic() < deadline, "the five lines never arrived"
            time.sleep(0.1)
        producer.send_signal(signal.SIGINT)
        # Wait with stdin still open: communicate() would close it, and an end
        # of input reaching produce before the signal would end it normally.
        producer.wait(timeout=60)
        assert producer.stderr is not None
        stderr = producer.stderr.read()
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        for pipe in (producer.stdin, producer.stderr):
            if pipe is not None:
                pipe.close()
    assert producer.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert "interrupted: 5 of 5 message(s) confirmed" in stderr


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def depth_or_zero(settings: Settings, queue: str) -> int:
    """The queue's depth, 0 while it does not exist yet."""
    try:
        return queue_depth(settings.rabbitmq_urls, queue)
    except pika.exceptions.ChannelClosedByBroker:  # 404 NOT_FOUND
        return 0
