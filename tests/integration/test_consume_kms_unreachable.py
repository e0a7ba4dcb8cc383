"""A consumer started against a KMS it cannot reach says so, and is not ready."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from command_kit import clean_env

from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.integration

ENVELOPE_MQ = str(Path(sys.executable).parent / "envelope-mq")
METRICS = re.compile(r"metrics at (http://127\.0\.0\.1:\d+)/metrics")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _readiness(base: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def test_a_typo_in_kms_endpoint_is_named_at_start_and_reported_not_ready(
    emq_rabbitmq_url: str, emq_amqp_names: AmqpNames, tmp_path: Path
) -> None:
    port = _closed_port()  # the typo: nothing listens there
    env = clean_env(
        HOME=str(tmp_path),
        RABBITMQ_URL=emq_rabbitmq_url,
        KMS_ENDPOINT=f"127.0.0.1:{port}",
        ALIBABA_CLOUD_ACCESS_KEY_ID="consumer-ak",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET="consumer-secret",
    )
    env.pop("HTTPS_PROXY", None)
    env.pop("https_proxy", None)
    consumer = subprocess.Popen(
        [
            ENVELOPE_MQ,
            "consume",
            "--queue",
            emq_amqp_names.queue,
            "--exchange",
            emq_amqp_names.exchange,
            "--metrics-port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            "consuming" in line for line in lines
        ):
            line = consumer.stderr.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert f"cannot reach KMS at http://127.0.0.1:{port}" in text, text
        assert "SDK.ConnectionFailed" in text
        assert "KMS_ENDPOINT" in text  # the hint says what to check
        found = METRICS.search(text)
        assert found is not None, text
        status, body = _readiness(found.group(1))
        assert status == 503
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert "cannot reach KMS" in str(checks.get("kms"))
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(30)
        if consumer.stderr is not None:
            consumer.stderr.close()
