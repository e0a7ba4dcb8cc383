"""EncryptedStage on the real broker and emulator: one hop across a trust boundary.

The producer seals under the tenant's key, the stage opens under it and
re-seals under its own key and context, and a consumer that may only Decrypt
under the stage's key reads the outputs. Inputs are acknowledged only once
their outputs are confirmed; what cannot be handed on is quarantined or stays.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.errors import ConfigError
from stage_kit import (
    EXPIRES,
    STAGE_CONTEXT,
    PipelineKms,
    hop_topologies,
    pipeline_kms,
    publish,
    read_all,
)

from envelope_mq import EncryptedStage, Reject, StageOutput
from envelope_mq.stage_output import output_message_id

pytestmark = pytest.mark.integration


@pytest.fixture
def kms() -> Iterator[PipelineKms]:
    with pipeline_kms() as running:
        yield running


@pytest.fixture
def topologies(emq_rabbitmq_url: str) -> Iterator[tuple[Topology, Topology]]:
    with hop_topologies(emq_rabbitmq_url, plain=False) as made:
        yield made


@pytest.fixture
def plain_topologies(emq_rabbitmq_url: str) -> Iterator[tuple[Topology, Topology]]:
    with hop_topologies(emq_rabbitmq_url, plain=True) as made:
        yield made


@contextlib.contextmanager
def running(stage: EncryptedStage) -> Iterator[None]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stage.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        yield
    finally:
        stage.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert errors == []


def wait_until(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stage_for(
    kms: PipelineKms,
    url: str,
    topologies: tuple[Topology, Topology],
    handler: object,
    **kw: object,
) -> EncryptedStage:
    inp, out = topologies
    return EncryptedStage.from_settings(
        kms.settings("stage", [url]),
        inp,
        handler,  # type: ignore[arg-type]
        output=out,
        context=STAGE_CONTEXT,
        **kw,  # type: ignore[arg-type]
    )


def test_outputs_are_resealed_under_the_stage_key_and_inputs_acked(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, out = topologies
    bodies = [f"event {i}".encode() for i in range(300)]

    def handler(message: ReceivedMessage) -> list[StageOutput | bytes]:
        assert message.key_id == kms.key_in
        assert message.context == {"tenant": "a"}
        n = int(message.body.split()[1])
        # zero, one or two outputs per input
        return [message.body.upper()] * (n % 3) + (
            [StageOutput(b"meta", content_type="text/plain")] if n % 3 == 2 else []
        )

    ids = publish(kms, emq_rabbitmq_url, inp, bodies)
    stage = stage_for(kms, emq_rabbitmq_url, topologies, handler)
    stats = stage.run(count=len(bodies))
    expected = sum(n % 3 + (n % 3 == 2) for n in range(len(bodies)))
    assert stats.handled == len(bodies)
    assert stats.outputs == expected
    assert stats.repeated_outputs == 0
    assert queue_depth(emq_rabbitmq_url, inp.queue) == 0  # every input acknowledged

    got = read_all(kms, emq_rabbitmq_url, out, expected)
    assert len(got) == expected
    assert {m.key_id for m in got} == {kms.key_out}
    assert {tuple(m.context.items()) for m in got} == {tuple(STAGE_CONTEXT.items())}
    by_id = {m.message_id: m for m in got}
    assert len(by_id) == expected  # ids distinct
    first = by_id[output_message_id(kms.key_out, ids[1], 0)]
    assert first.body == b"EVENT 1"
    meta = by_id[output_message_id(kms.key_out, ids[2], 2)]
    assert (meta.body, meta.content_type) == (b"meta", "text/plain")
    # Each output names its input, authenticated (wire format v2).
    assert (first.causation_id, meta.causation_id) == (ids[1], ids[2])
    assert {m.causation_id for m in got} == {i for n, i in enumerate(ids) if n % 3}
    assert all(m.headers["x-emq-cause"] == m.causation_id for m in got)


def test_undecryptable_and_rejected_inputs_are_quarantined(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, out = topologies
    ids = publish(kms, emq_rabbitmq_url, inp, [b"keep", b"reject", b"fail"])
    # A message with the envelope headers of none: malformed.
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_url))
    try:
        connection.channel().basic_publish(
            inp.exchange,
            inp.binding_key,
            b"not sealed",
            pika.BasicProperties(message_id="raw-1", timestamp=1, headers={}),
        )
    finally:
        connection.close()

    def handler(message: ReceivedMessage) -> bytes:
        if message.body == b"reject":
            raise Reject("not for analytics")
        if message.body == b"fail":
            raise RuntimeError("boom")
        return message.body

    stage = stage_for(kms, emq_rabbitmq_url, topologies, handler, max_deliveries=2)
    with running(stage):
        wait_until(lambda: sum(stage.stats.quarantined.values()) == 3)
    stats = stage.stats
    assert stats.handled == 1
    assert stats.quarantined == {"malformed": 1, "rejected": 1, "handler-error": 1}
    assert stats.requeued == 1
    assert queue_depth(emq_rabbitmq_url, inp.quarantine_queue) == 3
    assert queue_depth(emq_rabbitmq_url, inp.queue) == 0
    got = read_all(kms, emq_rabbitmq_url, out, 1)
    assert got[0].message_id == output_message_id(kms.key_out, ids[0], 0)


def test_an_unroutable_output_stops_the_stage_and_leaves_the_input(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, _ = topologies
    publish(kms, emq_rabbitmq_url, inp, [b"one", b"two"])
    stage = EncryptedStage.from_settings(
        kms.settings("stage", [emq_rabbitmq_url]),
        inp,
        lambda m: m.body,
        exchange=inp.exchange,  # exists; nothing is bound with this key
        routing_key=f"nowhere-{uuid.uuid4().hex[:6]}",
    )
    with pytest.raises(ConfigError, match="matched no queue"):
        stage.run()
    assert stage.stats.handled == 0
    assert queue_depth(emq_rabbitmq_url, inp.queue) == 2  # both inputs still queued
    assert queue_depth(emq_rabbitmq_url, inp.quarantine_queue) == 0


def test_stop_waits_for_the_outputs_in_flight(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, out = topologies
    count = 2_000
    with EncryptedPublisher.from_settings(
        kms.settings("producer", [emq_rabbitmq_url]), inp
    ) as publisher:
        for i in range(count):
            publisher.publish(b"x%d" % i)
    seen = threading.Event()
    stage = stage_for(
        kms, emq_rabbitmq_url, topologies, lambda m: (seen.set(), m.body)[1]
    )
    with running(stage):
        assert seen.wait(60)
    stats = stage.stats
    # every input acknowledged had its output confirmed, and no more
    assert stats.outputs == stats.handled
    assert queue_depth(emq_rabbitmq_url, out.queue) == stats.handled
    # the rest requeued (the broker counts them ready again shortly after)
    wait_until(
        lambda: queue_depth(emq_rabbitmq_url, inp.queue) == count - stats.handled
    )


def test_the_stage_command_hands_on_and_reports(
    kms: PipelineKms,
    emq_rabbitmq_url: str,
    plain_topologies: tuple[Topology, Topology],
    tmp_path: Path,
) -> None:
    inp, out = plain_topologies
    publish(kms, emq_rabbitmq_url, inp, [b"a", b"b", b"c"])
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_url))
    try:
        out.declare(connection.channel())  # --to-routing-key: it must exist
    finally:
        connection.close()
    (tmp_path / "shout.py").write_text(
        "def handle(message):\n    return [message.body.upper()]\n", encoding="utf-8"
    )
    env = {
        **os.environ,
        **kms.env("stage", [emq_rabbitmq_url]),
        "PYTHONPATH": str(tmp_path),
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "envelope_mq", "stage",
            "--queue", inp.queue, "--exchange", inp.exchange,
            "--to-exchange", out.exchange, "--to-routing-key", out.queue,
            "--context", "stage=analytics", "--handler", "shout:handle",
            "--count", "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 input(s) handed on as 3 output(s)" in done.stderr
    got = read_all(kms, emq_rabbitmq_url, out, 3)
    assert sorted(m.body for m in got) == [b"A", b"B", b"C"]
    assert {m.key_id for m in got} == {kms.key_out}


def test_a_nacked_output_requeues_its_input(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, out = topologies
    # The output queue takes one message, then the broker nacks (reject-publish).
    full = Topology(
        queue=out.queue,
        exchange=out.exchange,
        queue_arguments={**EXPIRES, "x-max-length": 1, "x-overflow": "reject-publish"},
        exchange_auto_delete=True,
    )
    publish(kms, emq_rabbitmq_url, inp, [b"one", b"two", b"three"])
    stage = stage_for(kms, emq_rabbitmq_url, (inp, full), lambda m: m.body)
    with running(stage):
        wait_until(lambda: stage.stats.outputs_nacked >= 2)
    assert stage.stats.handled == 1
    assert queue_depth(emq_rabbitmq_url, out.queue) == 1
    # the two inputs whose output was refused are back in their queue
    wait_until(lambda: queue_depth(emq_rabbitmq_url, inp.queue) == 2)
    assert queue_depth(emq_rabbitmq_url, inp.quarantine_queue) == 0


def test_a_stream_input_is_handed_on_and_its_position_kept(
    kms: PipelineKms,
    emq_rabbitmq_url: str,
    topologies: tuple[Topology, Topology],
    tmp_path: Path,
) -> None:
    from envelope_mq.consumer.streams import OffsetFile, OffsetSpec, StreamCursor

    inp, out = topologies
    stream = Topology(
        queue=inp.queue,
        exchange=inp.exchange,
        queue_type="stream",
        exchange_auto_delete=True,
    )
    offsets = tmp_path / "stage.offset"

    def stage() -> EncryptedStage:
        return EncryptedStage.from_settings(
            kms.settings("stage", [emq_rabbitmq_url]),
            stream,
            lambda m: m.body.upper(),
            output=out,
            context=STAGE_CONTEXT,
            stream=StreamCursor(OffsetSpec("first"), OffsetFile(offsets)),
        )

    publish(kms, emq_rabbitmq_url, stream, [b"e%d" % i for i in range(20)])
    first = stage().run(count=20)
    assert (first.handled, first.outputs) == (20, 20)
    assert offsets.read_text() == "19\n"
    # A second run resumes after the committed position: nothing twice.
    publish(kms, emq_rabbitmq_url, stream, [b"f%d" % i for i in range(5)])
    second = stage().run(count=5)
    assert (second.handled, second.redelivered) == (5, 0)
    assert offsets.read_text() == "24\n"
    got = read_all(kms, emq_rabbitmq_url, out, 25)
    assert sorted(m.body for m in got) == sorted(
        [b"E%d" % i for i in range(20)] + [b"F%d" % i for i in range(5)]
    )


def test_a_kms_outage_holds_the_stage_and_loses_nothing(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    from envelope_mq.consumer.backoff import Backoff

    inp, out = topologies
    publish(kms, emq_rabbitmq_url, inp, [b"h%d" % i for i in range(20)])
    stage = stage_for(
        kms,
        emq_rabbitmq_url,
        topologies,
        lambda m: m.body,
        kms_backoff=Backoff(initial=0.1, cap=0.3),
    )
    kms.emulator.faults.set(outage_seconds=3600)
    try:
        with running(stage):
            wait_until(lambda: stage.stats.kms_retries >= 3)
            # held, not quarantined, nothing handed on
            assert stage.stats.handled == 0
            assert sum(stage.stats.quarantined.values()) == 0
            kms.emulator.faults.clear()
            wait_until(lambda: stage.stats.handled == 20)
    finally:
        kms.emulator.faults.clear()
    assert stage.stats.outputs == 20
    got = read_all(kms, emq_rabbitmq_url, out, 20)
    assert sorted(m.body for m in got) == sorted(b"h%d" % i for i in range(20))
