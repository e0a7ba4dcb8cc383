"""Hand-written pika with pipelined confirms: the publish target's baseline.

A pika ``SelectConnection`` with publisher confirms pipelined in a window of
10,000, and nothing else: no sealing, no futures, no reconnect logic. It runs
twice per round: with plain messages (plaintext of the user's size,
persistent, no other property) routed as ours are (topic exchange,
``mandatory``), the publish target's baseline (issue 17); and, as a
reference, with messages identical to envelope-mq's on the wire (the same
sealed body, x-emq-* headers, message_id, timestamp, persistent, mandatory,
through a topic exchange), which shows what the broker allows for such
messages with confirms on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pika
import pika.spec

from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import SealedMessage
from envelope_mq.shared.errors import BrokerError

__all__ = [
    "WINDOW",
    "pika_confirmed_publish",
    "plain_message",
    "routed_plain_message",
    "sealed_message",
]

WINDOW = 10_000


@dataclass(frozen=True)
class Message:
    """Where and what the reference publisher sends, every time."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    mandatory: bool


def plain_message(queue: str, body: bytes) -> Message:
    """The plain side's message: persistent, no other property, default exchange."""
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    return Message("", queue, body, properties, mandatory=False)


def routed_plain_message(topology: Topology, body: bytes) -> Message:
    """A plain message routed as envelope-mq routes its own: the publish target's
    reference. Persistent, no other property, through the topology's topic
    exchange, ``mandatory``; ``body`` is what the user hands over (plaintext)."""
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    return Message(
        topology.exchange, topology.binding_key, body, properties, mandatory=True
    )


def sealed_message(topology: Topology, sealed: SealedMessage) -> Message:
    """envelope-mq's message as its producer frames it, sent through pika."""
    meta = sealed.meta
    properties = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=dict(sealed.headers),
        message_id=meta.message_id,
        timestamp=meta.timestamp,
        content_type=meta.content_type,
    )
    return Message(
        topology.exchange, topology.binding_key, sealed.body, properties, True
    )


def pika_confirmed_publish(url: str, message: Message, count: int) -> float:
    """Seconds to publish ``count`` copies of ``message`` and have all confirmed."""
    state = {"sent": 0, "acked": 0, "started": 0.0, "finished": 0.0}
    failures: list[str] = []
    channel: Any = None

    def on_open(connection: Any) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(opened: Any) -> None:
        nonlocal channel
        channel = opened
        channel.add_on_return_callback(lambda *_: failures.append("returned"))
        channel.confirm_delivery(on_confirm, callback=lambda _frame: start())

    def start() -> None:
        state["started"] = time.perf_counter()
        pump()

    def pump() -> None:
        while state["sent"] < count and state["sent"] - state["acked"] < WINDOW:
            channel.basic_publish(
                message.exchange,
                message.routing_key,
                message.body,
                message.properties,
                mandatory=message.mandatory,
            )
            state["sent"] += 1

    def on_confirm(frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            failures.append("nacked")
        state["acked"] = method.delivery_tag if method.multiple else state["acked"] + 1
        if state["acked"] >= count:
            state["finished"] = time.perf_counter()
            connection.close()
        else:
            pump()

    def on_open_error(failed: Any, error: BaseException) -> None:
        failures.append(f"cannot connect: {type(error).__name__}")
        failed.ioloop.stop()

    connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda closed, _reason: closed.ioloop.stop(),
    )
    connection.ioloop.start()
    if failures or not state["finished"]:
        raise BrokerError(f"the pika reference publisher failed: {failures[:3]}")
    return state["finished"] - state["started"]
