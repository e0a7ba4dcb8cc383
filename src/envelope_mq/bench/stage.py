"""A stage beside a hand-written pika hop: consume → publish with confirms.

Both sides take the same messages (sealed by envelope-mq's publisher, filled
into each side's input queue before the clock starts) and hand each one on to
an output queue with publisher confirms, acknowledging an input only once its
output is confirmed:

- hand-written pika: one ``SelectConnection``, a consuming channel (prefetch
  1,000) and a confirm-mode channel; each delivery is published on as it is
  (body and properties), and each ``basic.ack`` of the confirms acknowledges
  the inputs it covers with ``multiple``. No crypto, no futures, no
  reconnects: the broker's pace for this hop, in Python;
- :class:`EncryptedStage`: opens each input, calls a pass-through handler,
  seals the output under a master key and context of its own, publishes it
  on a confirm channel of its consuming connection without waiting, and
  acknowledges each input once its output is confirmed, in order.

The clock runs from connecting to the last input acknowledged (the stage's
``run(count)`` returns then; the pika side once its last ack is written).
Rounds alternate the order; the ratio stage ÷ pika is taken per round, then
the median.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pika
import pika.spec

from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.plain import PREFETCH
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import Opener
from envelope_mq.shared.errors import BrokerError
from envelope_mq.stage import EncryptedStage

__all__ = ["PIKA", "STAGE", "TARGET", "pika_hop", "run_stage"]

PIKA = "pika consume → publish, pipelined confirms"
STAGE = "envelope-mq stage (open, re-seal, confirm)"
TARGET = 0.8
_STAGE_CONTEXT = {**CONTEXT, "stage": "bench"}


def pika_hop(url: str, source: str, target: Topology, count: int) -> float:
    """Seconds to hand ``count`` messages from ``source`` on to ``target``, confirmed.

    An input is acknowledged (``multiple``) once the confirm of its output came.
    """
    state: dict[str, Any] = {"seq": 0, "acked_in": 0, "done": 0.0}
    failures: list[str] = []
    # output sequence number -> input delivery tag; both grow in step
    tags: dict[int, int] = {}
    channels: dict[str, Any] = {}

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_in)

    def on_in(channel: Any) -> None:
        channels["in"] = channel
        channel.connection.channel(on_open_callback=on_out)

    def on_out(channel: Any) -> None:
        channels["out"] = channel
        channel.add_on_return_callback(lambda *_: failures.append("returned"))
        channel.confirm_delivery(on_confirm, callback=lambda _f: qos())

    def qos() -> None:
        channels["in"].basic_qos(prefetch_count=PREFETCH, callback=lambda _f: consume())

    def consume() -> None:
        channels["in"].basic_consume(source, on_message)

    def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
        channels["out"].basic_publish(
            target.exchange, target.binding_key, body, properties, mandatory=True
        )
        state["seq"] += 1
        tags[state["seq"]] = method.delivery_tag

    def on_confirm(frame: Any) -> None:
        if not isinstance(frame.method, pika.spec.Basic.Ack):
            failures.append("nacked")
        tag = frame.method.delivery_tag
        upto = tags.pop(tag)
        if frame.method.multiple:
            for seq in [s for s in tags if s < tag]:
                del tags[seq]
        channels["in"].basic_ack(upto, multiple=True)
        state["acked_in"] = tag
        if tag >= count:
            state["done"] = time.perf_counter()
            channels["in"].connection.close()

    started = time.perf_counter()

    def stop(_connection: Any, error: object = None) -> None:
        if not state["done"]:
            failures.append(f"connection closed: {error}")
        _connection.ioloop.stop()

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_open_error_callback=stop,
        on_close_callback=stop,
    )
    connection.ioloop.start()
    if failures or state["acked_in"] < count:
        raise BrokerError(
            f"pika hop: {state['acked_in']} of {count} handed on; {failures[:3]}"
        )
    return float(state["done"] - started)


def _pass_through(message: ReceivedMessage) -> bytes:
    return message.body


def _stage_hop(lab: Lab, source: Topology, target: Topology, count: int) -> float:
    # One principal per side, as the lab has them: the stage opens with the
    # consumer's (Decrypt) cache and seals with the producer's (GenerateDataKey)
    # data keys, under a context of its own.
    stage = EncryptedStage(
        lab.broker.urls,
        source,
        Opener(lab.unwrap),
        lab.data_keys,
        lab.key_id,
        _pass_through,
        context=_STAGE_CONTEXT,
        output=target,
    )
    started = time.perf_counter()
    stats = stage.run(count=count)
    seconds = time.perf_counter() - started
    if stats.handled != count or stats.outputs != count:
        raise BrokerError(f"stage handed on {stats.handled} of {count}")
    return seconds


def _fill(publisher: EncryptedPublisher, body: bytes, count: int) -> None:
    for _ in range(count):
        publisher.publish(body)
    publisher.flush()


def run_stage(report: Report, lab: Lab, messages: int, size: int, rounds: int) -> None:
    """Inputs/s of a stage beside hand-written pika handing on the same messages."""
    body = os.urandom(size)
    broker = lab.broker
    topo = {
        side: (broker.topology(f"stage-{n}-in"), broker.topology(f"stage-{n}-out"))
        for n, side in enumerate((PIKA, STAGE))
    }
    fillers = {
        side: EncryptedPublisher(
            broker.urls, lab.data_keys, lab.key_id, topology=inp, context=CONTEXT
        )
        for side, (inp, _out) in topo.items()
    }
    rates: dict[str, list[float]] = {PIKA: [], STAGE: []}
    try:
        for filler in fillers.values():
            filler.connect()
        with Progress("stage", rounds * 2, announce=True) as bar:
            for r in range(rounds):
                for side in (PIKA, STAGE) if r % 2 == 0 else (STAGE, PIKA):
                    inp, out = topo[side]
                    _fill(fillers[side], body, messages)
                    broker.wait_for_count(inp.queue, messages)
                    if side == PIKA:
                        seconds = pika_hop(broker.url, inp.queue, out, messages)
                    else:
                        seconds = _stage_hop(lab, inp, out, messages)
                    broker.wait_for_count(out.queue, messages)
                    broker.purge(out.queue)
                    rates[side].append(rate(messages, seconds))
                    bar.advance()
    finally:
        for filler in fillers.values():
            filler.close()
    section = "stage: inputs handed on, confirmed, acknowledged, msg/s"
    for side in (PIKA, STAGE):
        report.add(section, side, median(rates[side]), "msg/s", rounds=rates[side])
    ratios = round_ratios(rates[STAGE], rates[PIKA])
    ratio = median(ratios)
    report.add(
        section,
        f"{STAGE} ÷ {PIKA}",
        ratio,
        "x",
        rounds=ratios,
        note="the same sealed messages; the stage also opens and re-seals each",
    )
    report.check(f"stage: {STAGE} ÷ {PIKA}", ratio, ">=", TARGET, "x")
