"""docs/asyncio.md, faststream.md and regions.md stay true: their Python examples run.

Each ```python block is run as a script. A block marked ``<!-- example:
producer -->`` or ``consumer`` runs with that principal's settings in the
environment (the real broker and the KMS emulator) and ``EMQ_QUEUE`` naming
this test's queue; an unmarked block needs neither.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from broker_kit import throwaway_queue
from command_kit import env_for
from envelope_mq.shared.config import Settings

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!-- example: (producer|consumer) -->")
TIMEOUT = 120


def examples(name: str) -> list[tuple[str | None, str]]:
    """(role or None, code) of every python block of docs/``name``, in order."""
    text = (DOCS / name).read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        found.append((mark.group(1) if mark else None, match.group(1)))
    return found


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    with throwaway_queue(emq_rabbitmq_url, "emq-docs") as name:
        yield name


def _env(settings: Settings | None, queue: str) -> dict[str, str] | None:
    if settings is None:
        return None
    return {**env_for(settings), "EMQ_QUEUE": queue}


def _script(tmp_path: Path, code: str) -> str:
    path = tmp_path / f"example-{uuid.uuid4().hex[:6]}.py"
    path.write_text(code, encoding="utf-8")
    return str(path)


def _run(tmp_path: Path, code: str, env: dict[str, str] | None) -> str:
    done = subprocess.run(
        [sys.executable, _script(tmp_path, code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


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
    produced = _env(emq_producer_settings, queue)
    consuming = _env(emq_consumer_settings, queue)

    assert "published 11 messages" in _run(tmp_path, producers[0], produced)
    iterated = _run(tmp_path, consumers[0], consuming)
    assert "consumed 11 messages" in iterated
    assert "acme order 0" in iterated

    _run(tmp_path, producers[0], produced)
    assert "handled 1, quarantined {}" in _run(tmp_path, consumers[1], consuming)
    for code in plain:
        _run(tmp_path, code, None)


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
        [sys.executable, _script(tmp_path, app)],
        env=_env(emq_consumer_settings, queue),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as running:
        try:
            _wait_for_queue(emq_rabbitmq_url, queue, running)
            assert "published" in _run(
                tmp_path, publish, _env(emq_producer_settings, queue)
            )
            out, err = running.communicate(timeout=TIMEOUT)
        finally:
            running.kill()
    assert running.returncode == 0, err[-3000:]
    assert "order 7 tea" in out
    for code in plain:
        assert "ok" in _run(tmp_path, code, None)


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
        assert "ok" in _run(tmp_path, code, None)
