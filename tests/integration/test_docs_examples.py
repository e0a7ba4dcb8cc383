"""docs/asyncio.md, faststream.md and regions.md stay true: their Python examples run.

Each ```python block is run as a script. A block marked ``<!-- example:
producer -->`` or ``consumer`` runs with that principal's settings in the
environment (the real broker and the KMS emulator) and ``EMQ_QUEUE`` naming
this test's queue; an unmarked block needs neither.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from broker_kit import throwaway_queue
from command_kit import TIMEOUT
from docs_kit import example_env, examples, run_example, script
from envelope_mq.shared.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    with throwaway_queue(emq_rabbitmq_url, "emq-docs") as name:
        yield name


def test_every_asyncio_example_runs(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    queue: str,
    tmp_path: Path,
) -> None:
    blocks = examples("asyncio.md")
    producers = [code for role, code in blocks if role == "producer"]
    consumers = [code for role, code in blocks if role == "consumer"]
    plain = [code for role, code in blocks if role is None]
    assert len(producers) == 1
    assert len(consumers) == 2
    produced = example_env(emq_producer_settings, queue)
    consuming = example_env(emq_consumer_settings, queue)

    assert "published 11 messages" in run_example(tmp_path, producers[0], produced)
    iterated = run_example(tmp_path, consumers[0], consuming)
    assert "consumed 11 messages" in iterated
    assert "acme order 0" in iterated

    run_example(tmp_path, producers[0], produced)
    assert "handled 1, quarantined {}" in run_example(tmp_path, consumers[1], consuming)
    for code in plain:
        run_example(tmp_path, code, None)


def test_every_faststream_example_runs(
    emq_rabbitmq_url: str,
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    queue: str,
    tmp_path: Path,
) -> None:
    blocks = examples("faststream.md")
    (app,) = [code for role, code in blocks if role == "consumer"]
    (publish,) = [code for role, code in blocks if role == "producer"]
    plain = [code for role, code in blocks if role is None]
    assert plain

    with subprocess.Popen(
        [sys.executable, script(tmp_path, app)],
        env=example_env(emq_consumer_settings, queue),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as running:
        try:
            _wait_for_queue(emq_rabbitmq_url, queue, running)
            assert "published" in run_example(
                tmp_path, publish, example_env(emq_producer_settings, queue)
            )
            out, err = running.communicate(timeout=TIMEOUT)
        finally:
            running.kill()
    assert running.returncode == 0, err[-3000:]
    assert "order 7 tea" in out
    for code in plain:
        assert "ok" in run_example(tmp_path, code, None)


def _wait_for_queue(url: str, queue: str, app: subprocess.Popen[str]) -> None:
    """The app's subscriber declares the queue once it is up."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert app.poll() is None, "the example app exited early"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            connection.channel().queue_declare(queue, passive=True)
            return
        except pika.exceptions.ChannelClosedByBroker:
            time.sleep(0.2)
        finally:
            if connection.is_open:
                connection.close()
    raise AssertionError(f"queue {queue!r} never appeared")


def test_every_regions_example_runs(tmp_path: Path) -> None:
    blocks = examples("regions.md")
    assert blocks
    for role, code in blocks:
        assert role is None  # in-memory regions: no broker, no KMS
        assert "ok" in run_example(tmp_path, code, None)
