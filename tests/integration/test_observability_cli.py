"""The commands' observability options in subprocesses: JSON logs, metrics URL."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pika
import pytest
from command_kit import ENVELOPE_MQ, env_for
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings

from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.integration

TIMEOUT = 120
STABLE_KEYS = ["ts", "level", "logger", "event", "message"]
METRICS_LINE = re.compile(
    r"^envelope-mq (\w+): metrics at http://127\.0\.0\.1:(\d+)/metrics ", re.M
)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVELOPE_MQ, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of ``stderr``, each one JSON object (or the test fails)."""
    return [json.loads(line) for line in stderr.splitlines()]


def metrics_line(stderr: str) -> re.Match[str] | None:
    """Where the metrics are served, from the JSON status line saying so."""
    for line in json_lines(stderr):
        if line["event"] == "metrics_serving":
            return METRICS_LINE.search(str(line["message"]))
    return None


def test_consume_writes_json_log_lines_with_the_stable_keys(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    emq_amqp_names: AmqpNames,
    emq_rabbitmq_url: str,
) -> None:
    topology_args = [
        "--queue",
        emq_amqp_names.queue,
        "--exchange",
        emq_amqp_names.exchange,
    ]
    observe = ["--log-format", "json", "--log-level", "info", "--metrics-port", "0"]
    # A malformed message first, then a good one, in a topology both commands
    # declare the same way.
    connection = connect_blocking(emq_rabbitmq_url)
    try:
        channel = connection.channel()
        Topology(emq_amqp_names.queue, exchange=emq_amqp_names.exchange).declare(
            channel
        )
        channel.confirm_delivery()
        channel.basic_publish(
            emq_amqp_names.exchange,
            emq_amqp_names.queue,
            b"not an envelope",
            pika.BasicProperties(
                message_id="malformed-1", timestamp=int(time.time()), headers={}
            ),
        )
    finally:
        connection.close()
    produced = run(
        ["produce", *topology_args, *observe, "hello, operator"],
        env_for(emq_producer_settings),
    )
    assert produced.returncode == 0, produced.stderr
    assert metrics_line(produced.stderr), produced.stderr

    consumed = run(
        ["consume", *topology_args, *observe, "--count", "1"],
        env_for(emq_consumer_settings),
    )

    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout)["body"] == "hello, operator"
    found = metrics_line(consumed.stderr)
    assert found is not None, consumed.stderr
    assert found.group(1) == "consume"
    lines = json_lines(consumed.stderr)
    assert lines, consumed.stderr
    for line in lines:
        assert list(line)[:5] == STABLE_KEYS
    quarantined = [line for line in lines if line["event"] == "message_quarantined"]
    assert len(quarantined) == 1, lines
    assert quarantined[0]["level"] == "warning"
    assert quarantined[0]["queue"] == emq_amqp_names.queue
    assert quarantined[0]["message_id"] == "malformed-1"
    assert quarantined[0]["reason"] == "malformed"
    assert "hello, operator" not in consumed.stderr  # plaintext never logged


def test_demo_says_where_its_metrics_can_be_scraped(emq_rabbitmq_url: str) -> None:
    done = run(
        ["demo", "--messages", "50", "--size", "100", "--metrics-port", "0"],
        env_for(None, RABBITMQ_URL=emq_rabbitmq_url),
    )

    assert done.returncode == 0, done.stderr
    found = METRICS_LINE.search(done.stderr)
    assert found is not None, done.stderr
    assert found.group(1) == "demo"
    assert 0 < int(found.group(2)) < 65536
    # the summary reads the same registry the port served
    assert re.search(
        r"metrics +published 50, confirmed 50, consumed 50, handled 50, "
        r"quarantined 0",
        done.stdout,
    ), done.stdout
