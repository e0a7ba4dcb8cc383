"""AsyncEncryptedStage on the real broker and emulator: the sync stage's hop on asyncio.

Each test runs its own event loop with asyncio.run. The fixtures and helpers
are the sync stage's (tests/integration/test_stage.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from broker_kit import queue_depth
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.errors import ConfigError
from stage_kit import (
    STAGE_CONTEXT,
    PipelineKms,
    hop_topologies,
    pipeline_kms,
    publish,
    read_all,
)

from envelope_mq import StageOutput
from envelope_mq.aio import AsyncEncryptedStage
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


def test_outputs_are_resealed_named_by_their_input_and_inputs_acked(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, out = topologies
    ids = publish(kms, emq_rabbitmq_url, inp, [b"a", b"b", b"skip"])

    async def handler(message: ReceivedMessage) -> list[StageOutput]:
        await asyncio.sleep(0)
        if message.body == b"skip":
            return []
        return [StageOutput(message.body.upper()), StageOutput(b"n")]

    stage = AsyncEncryptedStage.from_settings(
        kms.settings("stage", [emq_rabbitmq_url]),
        inp,
        handler,
        output=out,
        context=STAGE_CONTEXT,
    )
    stats = asyncio.run(stage.run(count=3))
    assert (stats.handled, stats.outputs, stats.repeated_outputs) == (3, 4, 0)
    assert queue_depth(emq_rabbitmq_url, inp.queue) == 0
    got = {m.message_id: m for m in read_all(kms, emq_rabbitmq_url, out, 4)}
    assert {m.key_id for m in got.values()} == {kms.key_out}
    first = got[output_message_id(kms.key_out, ids[0], 0)]
    assert (first.body, first.causation_id) == (b"A", ids[0])
    assert got[output_message_id(kms.key_out, ids[1], 1)].body == b"n"
    assert {m.causation_id for m in got.values()} == {ids[0], ids[1]}


def test_an_unroutable_output_stops_the_stage_and_requeues_the_input(
    kms: PipelineKms, emq_rabbitmq_url: str, topologies: tuple[Topology, Topology]
) -> None:
    inp, _ = topologies
    publish(kms, emq_rabbitmq_url, inp, [b"one", b"two"])
    stage = AsyncEncryptedStage.from_settings(
        kms.settings("stage", [emq_rabbitmq_url]),
        inp,
        lambda m: m.body,
        exchange=inp.exchange,
        routing_key=f"nowhere-{uuid.uuid4().hex[:6]}",
    )
    with pytest.raises(ConfigError, match="matched no queue"):
        asyncio.run(stage.run())
    assert stage.stats.handled == 0
    assert queue_depth(emq_rabbitmq_url, inp.queue) == 2
    assert queue_depth(emq_rabbitmq_url, inp.quarantine_queue) == 0
