"""``envelope-mq demo`` end to end, as ``make demo`` runs it."""

from __future__ import annotations

import re
import subprocess

import pytest
from command_kit import ENVELOPE_MQ, clean_env

pytestmark = pytest.mark.integration


def test_demo_publishes_consumes_and_verifies_every_message(
    emq_rabbitmq_url: str,
) -> None:
    done = subprocess.run(
        [ENVELOPE_MQ, "demo", "--messages", "200", "--size", "300"],
        env=clean_env(RABBITMQ_URL=emq_rabbitmq_url),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "200 messages of 300 bytes, all verified (200/200)" in out
    assert re.search(r"publish +200 msgs in [\d.]+ s = [\d,]+ msg/s", out)
    assert re.search(r"consume +200 msgs in [\d.]+ s = [\d,]+ msg/s", out)
    # one data key for the run: the caches spared every other KMS call
    assert "KMS calls  Decrypt 1, GenerateDataKey 1" in out
    assert "producer 199 hits / 1 miss, consumer 199 hits / 1 miss" in out
    # the stored form is ciphertext with the one v2 envelope header
    assert re.search(r"x-emq +\d+ bytes: wire format v2, AES-256-GCM", out)
    assert re.search(r"copy 1 +key \S+ \(default KMS\), blob \d+ bytes", out)
    assert re.search(r"body +\d[\d,]* bytes of ciphertext: [0-9a-f]{64}", out)
    assert '"seq":' in out.split("as the consumer read it:")[1]
    assert "secret" not in out.lower()


def test_demo_says_how_to_get_a_broker_when_none_answers() -> None:
    done = subprocess.run(
        [ENVELOPE_MQ, "demo", "--messages", "1"],
        env=clean_env(RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "no RabbitMQ answers" in done.stderr
    assert "apt-get install rabbitmq-server" in done.stderr
    assert "guest:guest" not in done.stderr  # the password is redacted
