"""Header layouts: what each way of carrying the envelope metadata costs the broker.

Not part of the default run (``--only layouts`` or ``--layouts``). The same
hand-written pika publisher with pipelined confirms (:mod:`.ceiling`) sends
persistent messages of one sealed body size (``size`` + nonce + tag) through a
topic exchange with ``mandatory``, as envelope-mq does, carrying the envelope
metadata of one real data key (from the run's KMS emulator) in each layout:

- baseline: message_id + timestamp only, no metadata at all;
- persistence only: no property but delivery mode, as the publish target's
  baseline sends (so the cost of message_id + timestamp shows too);
- v1: the five x-emq-* headers of wire format v1 (base64 wrapped key);
- one long string: one ``S`` header holding the v2 binary metadata, base64;
- one byte array: one ``x`` header holding the v2 binary metadata (v2's layout);
- nested table: one ``F`` header holding v1's five values as a table;
- in the body: the v2 binary metadata prefixed to the body, no header;
- the wrapped key alone: one ``x`` header holding only the raw
  CiphertextBlob, the least any layout that keeps the wrapped key in a header
  can carry (not a usable format: no version, no key id, no context). If
  this does not reach the publish target, no header layout can.

Layouts take turns within a round (the first rotating every round); each
publish is followed by a wait until the queue holds every message, then a
purge, so every layout meets an empty queue. The ratio of each layout to the
baseline of the same round, median over rounds, is the figure: classic and
quorum queues, one section each. When the broker runs on this machine, the
broker's own CPU time per message is reported beside each layout
(:mod:`.broker_cpu`): it varies much less with the machine's load than rates.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import struct
import time
import uuid
from collections.abc import Callable

import pika

from envelope_mq.bench.broker_cpu import BrokerCpu, find_broker_cpu
from envelope_mq.bench.ceiling import Message, pika_confirmed_publish
from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.progress import Progress
from envelope_mq.shared.amqp import QueueType, Topology
from envelope_mq.shared.crypto import OVERHEAD

__all__ = ["LAYOUTS", "QUEUE_TYPES", "layout_properties", "run_layouts", "v2_blob"]

BASELINE = "message_id + timestamp only (baseline)"
V1 = "v1: five x-emq-* headers"
LONG_STRING = "one long-string header (v2 bytes, base64)"
BYTE_ARRAY = "one byte-array header `x` (v2 layout)"
NESTED = "one nested table `F` (v1's five values)"
IN_BODY = "metadata in the body (v2 bytes), no header"
PERSISTENCE_ONLY = "persistence only, no other property (the publish target's)"
WRAPPED_ONLY = "the wrapped key alone, one `x` header (the floor of any header layout)"
LAYOUTS = (
    BASELINE,
    PERSISTENCE_ONLY,
    V1,
    LONG_STRING,
    BYTE_ARRAY,
    NESTED,
    IN_BODY,
    WRAPPED_ONLY,
)
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum")
# The region name a v2 copy of the wrapped key carries.
REGION = "cn-hangzhou"


def v2_blob(key_id: str, wrapped: str, context_json: str) -> bytes:
    """The v2 metadata bytes as the issue specifies them, one wrapped copy.

    Built here, independently of the wire module, so that this measurement
    does not depend on any implementation of the format: version u8, alg u8,
    context u16-length JSON, count u8, then per copy region u8-length, key id
    u8-length, CiphertextBlob (raw, base64-decoded) u16-length.
    """
    context = context_json.encode()
    region, key, blob = REGION.encode(), key_id.encode(), base64.b64decode(wrapped)
    return b"".join(
        (
            struct.pack(">BBH", 2, 1, len(context)),
            context,
            struct.pack(">BB", 1, len(region)),
            region,
            struct.pack(">B", len(key)),
            key,
            struct.pack(">H", len(blob)),
            blob,
        )
    )


def layout_properties(
    layout: str, key_id: str, wrapped: str, context_json: str, body: bytes
) -> tuple[dict[str, object] | None, bytes]:
    """The headers table (None: no headers property) and body of ``layout``."""
    blob = v2_blob(key_id, wrapped, context_json)
    v1: dict[str, object] = {
        "x-emq-version": 1,
        "x-emq-alg": "AES-256-GCM",
        "x-emq-key-id": key_id,
        "x-emq-data-key": wrapped,
        "x-emq-context": context_json,
    }
    if layout in (BASELINE, PERSISTENCE_ONLY):
        return None, body
    if layout == V1:
        return v1, body
    if layout == LONG_STRING:
        return {"x-emq": base64.b64encode(blob).decode()}, body
    if layout == BYTE_ARRAY:
        return {"x-emq": blob}, body
    if layout == NESTED:
        return {"x-emq": v1}, body
    if layout == IN_BODY:
        return None, struct.pack(">H", len(blob)) + blob + body
    if layout == WRAPPED_ONLY:
        return {"x-emq": base64.b64decode(wrapped)}, body
    raise ValueError(f"unknown layout: {layout}")


def _message(
    topology: Topology, layout: str, headers: dict[str, object] | None, body: bytes
) -> Message:
    if layout == PERSISTENCE_ONLY:
        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    else:
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers,
            message_id=str(uuid.uuid4()),
            timestamp=int(time.time()),
        )
    return Message(topology.exchange, topology.binding_key, body, properties, True)


def run_layouts(
    report: Report,
    lab: Lab,
    messages: int,
    size: int,
    rounds: int,
    kinds: tuple[QueueType, ...] = QUEUE_TYPES,
) -> dict[str, dict[str, float]]:
    """Measure every layout on each queue type; median ratios by type."""
    broker = lab.broker
    data_key = lab.data_keys.acquire(lab.key_id, CONTEXT)
    context_json = json.dumps(CONTEXT, sort_keys=True, separators=(",", ":"))
    body = os.urandom(size + OVERHEAD)  # a sealed body's size
    blob = v2_blob(data_key.key_id, data_key.wrapped, context_json)
    publish: dict[tuple[str, str], Callable[[], float]] = {}
    queues: dict[tuple[str, str], str] = {}
    for kind in kinds:
        for i, layout in enumerate(LAYOUTS):
            topology = broker.topology(f"layout-{kind}-{i}", queue_type=kind)
            headers, payload = layout_properties(
                layout, data_key.key_id, data_key.wrapped, context_json, body
            )
            message = _message(topology, layout, headers, payload)
            queues[kind, layout] = topology.queue
            publish[kind, layout] = functools.partial(
                pika_confirmed_publish, broker.url, message, messages
            )
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in publish}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in publish}
    parameters = pika.URLParameters(broker.url)
    probe = find_broker_cpu(str(parameters.host), int(parameters.port))
    with Progress("layouts", rounds * len(publish), announce=True) as bar:
        for r in range(rounds):
            for kind in kinds:
                shift = r % len(LAYOUTS)
                for layout in LAYOUTS[shift:] + LAYOUTS[:shift]:
                    before = probe.seconds() if isinstance(probe, BrokerCpu) else 0.0
                    seconds = publish[kind, layout]()
                    broker.wait_for_count(queues[kind, layout], messages)
                    if isinstance(probe, BrokerCpu):
                        used = probe.seconds() - before
                        cpu[kind, layout].append(used / messages * 1e6)
                    broker.purge(queues[kind, layout])
                    rates[kind, layout].append(rate(messages, seconds))
                    bar.advance()
    results: dict[str, dict[str, float]] = {}
    for kind in kinds:
        section = (
            f"header layouts, {kind} queue: pika, pipelined confirms, "
            f"{size + OVERHEAD}-byte persistent messages"
        )
        results[kind] = {}
        base = rates[kind, BASELINE]
        report.add(section, BASELINE, median(base), "msg/s", rounds=base)
        if isinstance(probe, BrokerCpu):
            for layout in LAYOUTS:
                report.add(
                    section,
                    f"broker CPU per message: {layout}",
                    median(cpu[kind, layout]),
                    "µs",
                    rounds=cpu[kind, layout],
                    note="the broker process's user + system time ÷ messages",
                )
        for layout in LAYOUTS[1:]:
            ratios = round_ratios(rates[kind, layout], base)
            results[kind][layout] = median(ratios)
            report.add(
                section,
                f"{layout} ÷ baseline",
                median(ratios),
                "x",
                rounds=ratios,
                note=f"{median(rates[kind, layout]):,.0f} msg/s",
            )
    report.parameters["v2 metadata bytes (one copy)"] = len(blob)
    report.parameters["wrapped key bytes (raw CiphertextBlob)"] = len(
        base64.b64decode(data_key.wrapped)
    )
    if not isinstance(probe, BrokerCpu):
        report.parameters["broker CPU per message"] = f"not measured: {probe}"
    return results
