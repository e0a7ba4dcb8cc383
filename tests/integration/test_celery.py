"""A real Celery worker on the real broker, its task messages sealed by envelope-mq.

The worker is a process of its own (``celery -A tests.integration.celery_app.app
worker``, solo pool); the test sends with ``delay``/``apply_async``, chains and
groups, reads the raw messages off the broker with pika, forges tampered,
foreign-key, denied and unsealed task messages, and kills the worker with
SIGKILL mid-task. The KMS is the emulator, through the real Alibaba SDK.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from celery import Celery, chain, group
from envelope_mq.consumer.transport import QUARANTINE_REASON_HEADER
from envelope_mq.shared.envelope import Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import InMemoryKeyProvider

from envelope_mq.celery.codec import CONTENT_TYPE, TASK_TYPE_PREFIX
from envelope_mq.celery.framing import frame, unframe
from envelope_mq.testing.kms import KmsFixture, running_emulator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
PIKA_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0

Worker = Callable[[], subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def kms() -> Iterator[KmsFixture]:
    with running_emulator() as fixture:
        yield fixture


@pytest.fixture
def env(kms: KmsFixture, tmp_path: Path) -> dict[str, str]:
    ran = tmp_path / "ran"
    ran.mkdir()
    return {
        "EMQ_CELERY_QUEUE": f"emq-celery-{uuid.uuid4().hex[:10]}",
        "EMQ_CELERY_RAN_DIR": str(ran),
        "EMQ_CELERY_BROKER": BROKER,
        "EMQ_CELERY_KMS": kms.endpoint,
        "EMQ_CELERY_KEY_ID": kms.key_id,
        "EMQ_CELERY_SEAL_ID": kms.producer.access_key_id,
        "EMQ_CELERY_SEAL_SECRET": kms.producer.access_key_secret,
        "EMQ_CELERY_OPEN_ID": kms.consumer.access_key_id,
        "EMQ_CELERY_OPEN_SECRET": kms.consumer.access_key_secret,
    }


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Celery]:
    from tests.integration.celery_app.app import make_app

    celery_app = make_app(env)
    yield celery_app
    # Its connection (close() leaves it open); it raises when never started.
    with contextlib.suppress(AttributeError):
        celery_app.backend.result_consumer.stop()
    celery_app.close()


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    workers: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(workers)}.log").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery",
                "-A", "tests.integration.celery_app.app",
                "worker", "-P", "solo", "-Q", env["EMQ_CELERY_QUEUE"],
                "-n", f"{env['EMQ_CELERY_QUEUE']}-{len(workers)}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "info",
            ],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        workers.append(process)
        return process

    yield start
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    for log in logs:
        log.close()


def ran(env: Mapping[str, str], name: str) -> list[str]:
    folder = Path(env["EMQ_CELERY_RAN_DIR"])
    return sorted(p.read_text() for p in folder.glob(f"{name}-*"))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def take_raw(queue: str, count: int) -> list[tuple[Any, bytes]]:
    """``count`` messages taken off ``queue`` (acknowledged: gone from it)."""
    connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    try:
        channel = connection.channel()
        taken: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + TIMEOUT
        while len(taken) < count:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                assert time.monotonic() < deadline, f"{len(taken)} of {count}"
                time.sleep(0.05)
                continue
            taken.append((properties, body))
        return taken
    finally:
        connection.close()


def publish_raw(queue: str, properties: Any, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, properties)
    finally:
        connection.close()


def in_clear(needle: str, properties: Any, body: bytes) -> list[str]:
    """Where ``needle`` shows in a raw message: body, header or property."""
    found = []
    raw = needle.encode()
    if raw in body or json.dumps(needle).encode() in body:
        found.append("body")
    for name, value in vars(properties).items():
        if needle in repr(value):
            found.append(name)
    return found


def test_tasks_run_end_to_end_sealed(
    app: Celery, env: dict[str, str], start_worker: Worker
) -> None:
    start_worker()
    assert app.send_task("emq.add", (2, 3)).get(timeout=TIMEOUT) == 5
    echo = app.signature("emq.echo")
    assert echo.delay("hello", note="n").get(timeout=TIMEOUT) == "hello|n"
    assert (
        echo.apply_async(("again",), {"note": "m"}, countdown=0.1).get(timeout=TIMEOUT)
        == "again|m"
    )
    add = app.signature("emq.add")
    assert (
        chain(add.clone((1, 2)), add.clone((3,))).apply_async().get(timeout=TIMEOUT)
        == 6
    )
    assert group(add.clone((i, i)) for i in range(5)).apply_async().get(
        timeout=TIMEOUT
    ) == [0, 2, 4, 6, 8]
    assert app.send_task("emq.flaky", ("tok",)).get(timeout=TIMEOUT) == "tok"
    assert ran(env, "flaky") == ["0", "1", "2"]


def test_no_argument_in_clear_on_the_broker(
    app: Celery, env: dict[str, str], start_worker: Worker
) -> None:
    secret, keyword = f"s3cret-{uuid.uuid4().hex}", f"kw-{uuid.uuid4().hex}"
    app.signature("emq.echo").apply_async((secret,), {"note": keyword})
    [(properties, body)] = take_raw(env["EMQ_CELERY_QUEUE"], 1)
    assert properties.content_type == CONTENT_TYPE
    assert properties.headers["argsrepr"] == "<sealed>"
    for needle in (secret, keyword):
        assert in_clear(needle, properties, body) == []
    # The same message, put back, runs; its result travels sealed as well.
    publish_raw(env["EMQ_CELERY_QUEUE"], properties, body)
    start_worker()
    wait_for(lambda: ran(env, "echo") == [repr(secret)], "the echo task")
    # Nobody waits on the result yet: the reply is in the client's queue.
    [(reply_properties, reply)] = take_raw(properties.reply_to, 1)
    assert reply_properties.content_type == CONTENT_TYPE
    for needle in (secret, keyword):
        assert in_clear(needle, reply_properties, reply) == []
    publish_raw(properties.reply_to, reply_properties, reply)
    result = app.AsyncResult(properties.headers["id"]).get(timeout=TIMEOUT)
    assert result == f"{secret}|{keyword}"


def forged(properties: Any, body: bytes, *, task_id: str) -> tuple[Any, bytes]:
    """A copy of a genuine task message under another task id (headers only)."""
    headers = dict(properties.headers, id=task_id)
    copy = pika.BasicProperties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        correlation_id=task_id,
        delivery_mode=2,
    )
    return copy, body


def test_bad_task_messages_are_quarantined_never_run(
    app: Celery, env: dict[str, str], start_worker: Worker
) -> None:
    queue = env["EMQ_CELERY_QUEUE"]
    app.signature("emq.echo").apply_async(("victim",))
    [(properties, body)] = take_raw(queue, 1)
    parts = unframe(body)

    # 1. tampered: one bit of the ciphertext flipped
    tampered = bytearray(body)
    tampered[-1] ^= 1
    publish_raw(queue, properties, bytes(tampered))
    # 2. sealed under a master key KMS does not know (a foreign sender)
    foreign_id = str(uuid.uuid4())
    sealer = Sealer(
        DataKeyCache(InMemoryKeyProvider()),
        "foreign-key",
        {"app": "celery-test"},
        wire_version=1,
    )
    plaintext = json.dumps([["foreign"], {}, {}]).encode()
    meta = type(parts.meta)(
        foreign_id, parts.meta.timestamp, parts.meta.content_type,
        parts.meta.content_encoding, TASK_TYPE_PREFIX + "emq.echo",
    )  # fmt: skip
    publish_raw(
        queue,
        *forged(properties, frame(sealer.seal(plaintext, meta)), task_id=foreign_id),
    )
    # 3. a genuine seal under other headers (another task id): replayed
    publish_raw(queue, *forged(properties, body, task_id=str(uuid.uuid4())))
    # 4. not sealed at all: a plain json task message
    plain_id = str(uuid.uuid4())
    plain_props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=dict(properties.headers, id=plain_id),
        correlation_id=plain_id,
    )
    publish_raw(queue, plain_props, json.dumps([["plain"], {}, {}]).encode())
    # then a genuine one: the solo worker takes them in order
    marker = app.signature("emq.echo").apply_async(("after",))

    start_worker()
    assert marker.get(timeout=TIMEOUT) == "after|"
    assert ran(env, "echo") == [repr("after")]
    quarantined = take_raw(queue + ".quarantine", 4)
    reasons = [p.headers[QUARANTINE_REASON_HEADER] for p, _ in quarantined]
    assert reasons == ["undecryptable", "kms-rejected", "malformed", "malformed"]
    assert [p.headers["x-emq-quarantine-detail"] for p, _ in quarantined[2:]] == [
        "sealed for another task message",
        "not sealed",
    ]
    assert quarantined[0][1] == bytes(tampered)


def test_a_worker_killed_mid_task_loses_nothing(
    app: Celery, env: dict[str, str], start_worker: Worker
) -> None:
    first = start_worker()
    result = app.signature("emq.slow").apply_async(("survivor", 2.0))
    wait_for(lambda: bool(ran(env, "started")), "the task to start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert ran(env, "slow") == []
    start_worker()
    assert result.get(timeout=TIMEOUT) == "survivor"
    assert ran(env, "slow") == [repr("survivor")]


def queue_depth(queue: str) -> int:
    """Messages ready in ``queue``; 0 when it does not exist."""
    connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    try:
        channel = connection.channel()
        try:
            declared = channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(declared.method.message_count)
    finally:
        if connection.is_open:
            connection.close()


def test_a_kms_outage_holds_task_messages_until_kms_answers(
    app: Celery,
    env: dict[str, str],
    kms: KmsFixture,
    start_worker: Worker,
    tmp_path: Path,
) -> None:
    result = app.signature("emq.echo").apply_async(("held",))  # sealed before
    kms.emulator.faults.set(outage_seconds=3600)
    try:
        start_worker()
        log = tmp_path / "worker-0.log"
        wait_for(
            lambda: log.read_text(errors="replace").count("task message held") >= 2,
            "the worker to hold the task twice",
        )
        assert ran(env, "echo") == []
        assert queue_depth(env["EMQ_CELERY_QUEUE"] + ".quarantine") == 0
    finally:
        kms.emulator.faults.clear()
    assert result.get(timeout=TIMEOUT) == "held|"
    assert ran(env, "echo") == [repr("held")]
