"""A stage whose broker connection is reset every 1.5 s, mid-stream: two hops.

The stage (in a thread) reaches the broker through the fault proxy, which
resets its connection again and again while the producer and the consumer,
connected directly, keep going. Each reset drops the stage's inputs in flight
unacknowledged and its outputs unconfirmed: the broker delivers the inputs
again, the stage hands them on again (duplicates, with the same derived ids),
and nothing is lost.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from broker_kit import delete
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
    address_of,
    payload,
    quick_publisher_options,
    resetting,
    settle,
)
from stage_kit import PipelineKms, pipeline_kms

from envelope_mq.stage import EncryptedStage
from envelope_mq.stage_output import output_message_id
from envelope_mq.testing.faultproxy import FaultProxy
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

MESSAGES = 6_000


@pytest.fixture
def kms() -> Iterator[PipelineKms]:
    with pipeline_kms() as running:
        yield running


@pytest.fixture
def output_queue(emq_rabbitmq_url: str, emq_amqp_names: AmqpNames) -> Iterator[str]:
    """The output queue (and its quarantine), deleted afterwards."""
    name = f"{emq_amqp_names.queue}-out"
    yield name
    with contextlib.suppress(pika.exceptions.AMQPError):
        delete(emq_rabbitmq_url, [name, f"{name}.quarantine"])


def test_a_stage_whose_connection_is_reset_again_and_again_loses_nothing(
    kms: PipelineKms,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
    output_queue: str,
) -> None:
    inp = Topology(
        queue=emq_amqp_names.queue,
        exchange=emq_amqp_names.exchange,
        queue_arguments={"x-expires": 600_000},
        exchange_auto_delete=True,
    )
    out = Topology(
        queue=output_queue,
        exchange=inp.exchange,
        queue_arguments={"x-expires": 600_000},
        exchange_auto_delete=True,
    )
    urls = [emq_rabbitmq_url]
    ledger = MessageLedger("stage connection reset every 1.5 s, two hops")
    downstream = EncryptedConsumer.from_settings(
        kms.settings("consumer", urls),
        out,
        lambda m: ledger.handled(m.message_id, m.body),
        reconnect_backoff=FAST_RECONNECT,
    )
    publisher = EncryptedPublisher.from_settings(
        kms.settings("producer", urls), topology=inp, options=quick_publisher_options()
    )
    with FaultProxy(address_of(emq_rabbitmq_url), name="broker") as proxy:

        def passing(message: ReceivedMessage) -> bytes:
            return message.body

        stage = EncryptedStage.from_settings(
            kms.settings("stage", [proxy.rewrite(emq_rabbitmq_url)]),
            inp,
            passing,
            output=out,
            context={"stage": "analytics"},
            prefetch=200,
            reconnect_backoff=FAST_RECONNECT,
        )
        errors: list[BaseException] = []

        def run_stage() -> None:
            try:
                stage.run()
            except BaseException as exc:  # reported below
                errors.append(exc)

        runner = threading.Thread(target=run_stage, name="stage")
        sent: list[Sent] = []
        with (
            publisher,
            QuarantineWatcher(urls, inp, ledger),
            QuarantineWatcher(urls, out, ledger),
            ConsumerThread(downstream),
        ):
            runner.start()
            with resetting(proxy, ledger, 1.5, "stage connection resets"):
                # About 1,000 messages/s: the run spans several resets.
                for index in range(MESSAGES):
                    body = payload("reset", index, 200)
                    message_id = f"reset-{index:06d}"
                    ledger.published(
                        output_message_id(kms.key_out, message_id, 0), body
                    )
                    sent.append(
                        Sent(
                            message_id,
                            body,
                            publisher.publish(body, message_id=message_id),
                        )
                    )
                    if index % 100 == 99:
                        time.sleep(0.1)
                for item in sent:
                    item.future.result(PATIENCE)
            settle(ledger)
            stage.stop()
            runner.join(PATIENCE)
    assert not runner.is_alive()
    assert errors == []
    ledger.fault("stage reconnects", stage.stats.reconnects)
    report = ledger.check()
    assert report["quarantined"] == {}
    # The premise: the resets did hit the stage mid-stream.
    assert stage.stats.reconnects >= 3
    assert report["duplicates"] <= stage.stats.repeated_outputs
