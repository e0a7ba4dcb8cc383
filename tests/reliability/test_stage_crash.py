"""A stage killed with SIGKILL mid-stream, three times, and restarted: two hops.

producer (tenant key) → input queue → ``envelope-mq stage`` (re-seals under
its own key) → output queue → consumer (may Decrypt under the stage's key
only). The stage processes are real commands killed with SIGKILL while
messages flow; the ledger books each message under the id its output must
carry (derived from the input's, stage_output.py) with the body the producer
sent, so it balances across both hops: lost = 0, and the duplicates a killed
stage causes (outputs confirmed, input not yet acknowledged) are counted.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from command_kit import ENVELOPE_MQ_MODULE
from crash_kit import Processes, wait_until
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from scenario_kit import (
    FAST_RECONNECT,
    PATIENCE,
    ConsumerThread,
    QuarantineWatcher,
    Sent,
    payload,
    quick_publisher_options,
    settle,
)
from stage_kit import PipelineKms, hop_topologies, pipeline_kms

from envelope_mq.stage_output import output_message_id
from envelope_mq.testing.ledger import MessageLedger

pytestmark = pytest.mark.reliability

MESSAGES = 8_000
KILLS = 3
OUTPUTS_BETWEEN_KILLS = 1_200


@pytest.fixture
def kms() -> Iterator[PipelineKms]:
    with pipeline_kms() as running:
        yield running


@pytest.fixture
def hops(emq_rabbitmq_url: str) -> Iterator[tuple[Topology, Topology]]:
    """Input and output, declared as the commands declare them; deleted after."""
    with (
        contextlib.suppress(pika.exceptions.AMQPError),
        hop_topologies(emq_rabbitmq_url, plain=True, name="stagecrash") as made,
    ):
        yield made


def test_a_stage_killed_three_times_loses_nothing_across_two_hops(
    kms: PipelineKms,
    emq_rabbitmq_url: str,
    hops: tuple[Topology, Topology],
    tmp_path: Path,
    processes: Processes,
) -> None:
    inp, out = hops
    urls = [emq_rabbitmq_url]
    ledger = MessageLedger("stage SIGKILLed 3 times mid-stream, two hops")
    env = {**os.environ, **kms.env("stage", urls)}
    argv = [*ENVELOPE_MQ_MODULE, "stage"]
    argv += ["--queue", inp.queue, "--exchange", inp.exchange]
    argv += ["--to-queue", out.queue, "--to-exchange", out.exchange]
    argv += ["--context", "stage=analytics", "--prefetch", "200"]

    strays: list[str] = []  # outputs not sealed as the stage seals them

    def book(message: ReceivedMessage) -> None:
        # Only the stage's key and context may reach this consumer, and each
        # output names its input (the authenticated causation id).
        cause = message.causation_id or ""
        if (
            message.key_id != kms.key_out
            or message.context != {"stage": "analytics"}
            or message.message_id != output_message_id(kms.key_out, cause, 0)
        ):
            strays.append(message.message_id)
        ledger.handled(message.message_id, message.body)

    downstream = EncryptedConsumer.from_settings(
        kms.settings("consumer", urls), out, book, reconnect_backoff=FAST_RECONNECT
    )
    publisher = EncryptedPublisher.from_settings(
        kms.settings("producer", urls),
        topology=inp,
        context={"tenant": "a"},
        options=quick_publisher_options(),
    )
    sent: list[Sent] = []

    def produce() -> None:
        # Faster than one stage hands on (a backlog, a full prefetch window),
        # for seconds: the kills land with inputs and outputs in flight.
        for index in range(MESSAGES):
            body = payload("stage", index, 300)
            message_id = f"stage-{index:06d}"
            # Booked under the id of its one output, with the producer's body:
            # what the consumer books must match across both hops.
            ledger.published(output_message_id(kms.key_out, message_id, 0), body)
            sent.append(
                Sent(message_id, body, publisher.publish(body, message_id=message_id))
            )
            if index % 500 == 499:
                time.sleep(0.1)

    producer = threading.Thread(target=produce, name="producer")
    with (
        publisher,
        QuarantineWatcher(urls, inp, ledger),
        QuarantineWatcher(urls, out, ledger),
        ConsumerThread(downstream),
    ):
        producer.start()
        for run in range(1, KILLS + 1):
            stage = processes.start(argv, env, tmp_path / f"stage-{run}.stderr")
            target = run * OUTPUTS_BETWEEN_KILLS
            wait_until(lambda t=target: ledger.settled >= t, f"{target} outputs")  # type: ignore[misc]
            stage.kill()
            ledger.fault("stage SIGKILLs", 1)
        final = processes.start(argv, env, tmp_path / "stage-last.stderr")
        producer.join(PATIENCE)
        for item in sent:
            item.future.result(PATIENCE)
        settle(ledger)
        time.sleep(1)  # duplicates still on their way are counted too
        assert final.terminate() == 0
    last = (tmp_path / "stage-last.stderr").read_text(encoding="utf-8")
    assert "input(s) handed on" in last, last
    assert strays == []
    report = ledger.check()
    assert report["published"] == MESSAGES
    assert report["quarantined"] == {}
    assert report["lost"] == 0
