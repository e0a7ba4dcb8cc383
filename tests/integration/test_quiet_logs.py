"""A broker outage in the logs: one warning per reconnect attempt, with its cause.

pika's own lines (13 ERROR lines for one refused connection) and tracebacks
stay out below --log-level debug, and under --log-format json every stderr line
is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from command_kit import ENVELOPE_MQ
from envelope_mq.producer import EncryptedPublisher, TransportOptions
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.observability import logging_configured

from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.kms import KmsFixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_SECONDS = 5.0
TIMEOUT = 120.0


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream`` as they come, read by a thread."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_consumer_through_an_outage_logs_one_line_per_reconnect_attempt(
    emq_kms: KmsFixture,
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_url: str,
    emq_rabbitmq_proxy: FaultProxy,
    log_format: str,
) -> None:
    consumer_settings = emq_kms.settings(
        "consumer", [emq_rabbitmq_proxy.rewrite(emq_rabbitmq_url)]
    )
    env = {
        **os.environ,
        "RABBITMQ_URL": consumer_settings.rabbitmq_urls[0],
        "KMS_ENDPOINT": consumer_settings.kms_endpoint or "",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": consumer_settings.access_key_id or "",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": consumer_settings.access_key_secret or "",
    }
    # The topology as the command declares it (no queue arguments).
    topology = Topology(emq_amqp_topology.queue, exchange=emq_amqp_topology.exchange)
    command = [ENVELOPE_MQ, "consume", "--queue", topology.queue]
    command += ["--exchange", topology.exchange, "--count", "2"]
    command += ["--log-format", log_format]
    consumer = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert consumer.stdout is not None
        out = lines_of(consumer.stdout)
        with EncryptedPublisher.from_settings(emq_producer_settings, topology) as pub:
            pub.send(b"before")
            assert json.loads(out.get(timeout=TIMEOUT))["body"] == "before"
            emq_rabbitmq_proxy.down()  # refused, and the open connection dropped
            time.sleep(OUTAGE_SECONDS)
            emq_rabbitmq_proxy.up()
            pub.send(b"after")
        _, stderr = consumer.communicate(timeout=TIMEOUT)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert consumer.returncode == 0, stderr

    lines = stderr.splitlines()
    assert "Traceback" not in stderr
    assert "pika" not in stderr
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line parses
        events = [r["event"] for r in records]
        assert not [r for r in records if "stack" in r]
    else:
        events = [
            "broker_lost"
            if "lost the broker" in line
            else "reconnect_failed"
            if "reconnect failed" in line
            else line
            for line in lines
        ]
    attempts = events.count("reconnect_failed")
    assert events.count("broker_lost") == 1
    assert attempts >= 1
    # started + lost + one per attempt + the summary, and nothing else
    assert len(lines) == attempts + 3, stderr
    failed = [line for line in lines if "reconnect failed" in line]
    assert all("ConnectionRefusedError" in line for line in failed), failed


def test_a_publisher_through_an_outage_warns_once_per_reconnect_attempt(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    emq_rabbitmq_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(
        emq_producer_settings,
        rabbitmq_urls=(
            emq_rabbitmq_proxy.rewrite(emq_producer_settings.rabbitmq_urls[0]),
        ),
    )
    log = tmp_path / "log.jsonl"
    options = TransportOptions(initial_backoff=0.5, max_backoff=1.0)
    with (
        log.open("w", encoding="utf-8") as stream,
        logging_configured("json", "warning", stream=stream),
        EncryptedPublisher.from_settings(
            settings, emq_amqp_topology, options=options
        ) as pub,
    ):
        pub.send(b"before")
        emq_rabbitmq_proxy.down()
        time.sleep(OUTAGE_SECONDS)
        emq_rabbitmq_proxy.up()
        assert pub.send(b"after", timeout=TIMEOUT)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events.count("broker_lost") == 1
    assert events.count("reconnect_failed") >= 1
    assert set(events) == {"broker_lost", "reconnect_failed"}, records
    assert not [r for r in records if r["logger"].startswith("pika")]
    failed = [r for r in records if r["event"] == "reconnect_failed"]
    assert all("ConnectionRefusedError" in r["message"] for r in failed)
