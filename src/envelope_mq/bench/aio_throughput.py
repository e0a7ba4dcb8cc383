"""asyncio throughput: envelope-mq's asyncio clients and FastStream's middleware.

Two sections, each interleaved round by round on one event loop:

- ``asyncio``: :class:`AsyncEncryptedPublisher` and
  :class:`AsyncEncryptedConsumer` beside plain aio-pika written as a user
  would with confirms, in the same shape: persistent, mandatory, pipelined
  the same way (every publish started as its own task, at most the
  publisher's in-flight window unconfirmed, then every confirm awaited), and
  a consumer with manual acks in ``multiple`` batches of 50 and the same
  prefetch, timed alike on every side from the first message handled to the
  last (connecting and subscribing, which differ, are not). Two aio-pika
  sides: one
  sends plaintext bodies of the same size to the queue (what encryption costs
  in all), one sends envelope-mq's very messages, sealed once beforehand,
  headers and all, through a topic exchange as envelope-mq does (what our
  client costs beyond aio-pika: the targets). Ratios are taken
  within each round, then the median.
- ``faststream``: a RabbitBroker with :class:`EnvelopeMiddleware` beside one
  without: the seconds from the first publish to the last message handled.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aio_pika.abc
from faststream.rabbit import RabbitBroker, RabbitQueue

from envelope_mq.aio import AsyncEncryptedConsumer, AsyncEncryptedPublisher
from envelope_mq.aio.broker import outgoing_message
from envelope_mq.bench.broker import QUEUE_EXPIRES_MS, BenchBroker
from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.plain import PREFETCH
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.faststream import EnvelopeMiddleware
from envelope_mq.producer.options import TransportOptions
from envelope_mq.producer.publisher import new_message_id
from envelope_mq.progress import Progress
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.errors import BrokerError

__all__ = ["run_asyncio", "run_faststream"]

PLAIN, OURS = "plain aio-pika, confirms", "envelope-mq asyncio"
SAME = "aio-pika, envelope-mq's messages, confirms"
FS_PLAIN, FS_SEALED = "FastStream", "FastStream + EnvelopeMiddleware"
_ACK_BATCH = 50
# Nothing in a round may take longer than this; reaching it fails the run.
_PATIENCE = 300.0
# FastStream publishes are awaited this many at a time (each awaits its confirm).
_FS_WINDOW = 1000
# The aio-pika sides' in-flight window: AsyncEncryptedPublisher's default.
_IN_FLIGHT = TransportOptions().max_in_flight


def run_asyncio(
    report: Report, lab: Lab, messages: int, size: int, rounds: int
) -> None:
    """Publish and consume rates of the asyncio clients beside plain aio-pika."""
    asyncio.run(_asyncio_rounds(report, lab, messages, os.urandom(size), rounds))


def run_faststream(
    report: Report, lab: Lab, messages: int, size: int, rounds: int
) -> None:
    """End-to-end rate of FastStream with the middleware beside without it."""
    asyncio.run(_faststream_rounds(report, lab, messages, os.urandom(size), rounds))


# ---- asyncio -----------------------------------------------------------------


async def _plain_publish(
    exchange: aio_pika.abc.AbstractExchange,
    queue: str,
    make: Callable[[int], aio_pika.Message],
    count: int,
) -> _Span:
    """As AsyncEncryptedPublisher pipelines: a task per message, in a window."""
    window = asyncio.Semaphore(_IN_FLIGHT)

    async def one(message: aio_pika.Message) -> None:
        try:
            await exchange.publish(message, queue, mandatory=True)
        finally:
            window.release()

    span = _Span(count)
    confirms = []
    for i in range(count):
        await window.acquire()
        confirms.append(asyncio.ensure_future(one(make(i))))
    await asyncio.gather(*confirms)
    return span.stop()


class _Span:
    """Wall-clock and CPU seconds of this process over ``count`` messages.

    The CPU time is what the client spent on them (the broker is another
    process; nothing else of the bench runs meanwhile): on a shared machine
    it swings far less than the wall clock, which waits for the broker and
    for other processes.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> _Span:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        return self

    def rate(self) -> float:
        """Messages/s."""
        return rate(self.count, self.wall)

    def cpu_us(self) -> float:
        """CPU microseconds per message."""
        return self.cpu / self.count * 1e6


class _Handled(_Span):
    """From the first of ``count + 1`` messages handled to the last."""

    def __init__(self, count: int) -> None:
        super().__init__(count - 1)
        self.seen = 0
        self._last = (0.0, 0.0)

    def tick(self) -> None:
        now = (time.perf_counter(), time.process_time())
        self.seen += 1
        if self.seen == 1:
            self.wall, self.cpu = now
        self._last = now

    def stop(self) -> _Span:
        self.wall = self._last[0] - self.wall
        self.cpu = self._last[1] - self.cpu
        return self


async def _plain_consume(
    channel: aio_pika.abc.AbstractChannel, queue: str, count: int
) -> _Span:
    done = asyncio.get_running_loop().create_future()
    handled = _Handled(count)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        handled.tick()
        seen = handled.seen
        if seen % _ACK_BATCH == 0 or seen == handled.count + 1:
            await message.ack(multiple=True)
        if seen == handled.count + 1 and not done.done():
            done.set_result(None)

    declared = await channel.get_queue(queue, ensure=False)
    tag = await declared.consume(on_message)
    try:
        await asyncio.wait_for(done, _PATIENCE)
    except TimeoutError:
        raise BrokerError(
            f"plain aio-pika consumed {handled.seen} of {count}"
        ) from None
    await declared.cancel(tag)
    return handled.stop()


async def _settled(broker: BenchBroker, queue: str, count: int) -> None:
    """Wait until ``queue`` holds ``count`` messages, off the loop.

    The bench broker's connection is blocking: waiting on the loop would
    starve the asyncio clients' heartbeats.
    """
    await asyncio.to_thread(broker.wait_for_count, queue, count)


async def _ours_publish(
    publisher: AsyncEncryptedPublisher, body: bytes, count: int
) -> _Span:
    span = _Span(count)
    futures = [await publisher.publish(body) for _ in range(count)]
    await asyncio.gather(*futures)
    return span.stop()


async def _ours_consume(
    make: Callable[[], AsyncEncryptedConsumer], count: int
) -> _Span:
    """A consumer per round (as the sync bench's run()), timed as the others.

    A consumer left connected between rounds would hold a prefetch window of
    the next round's messages.
    """
    handled = _Handled(count)

    async def handler(message: ReceivedMessage) -> None:
        """As little as the plain side's handler: the clock."""
        handled.tick()

    async with make() as consumer:
        try:
            await asyncio.wait_for(consumer.run(handler, count=count), _PATIENCE)
        except TimeoutError:
            raise BrokerError(f"consumed {consumer.stats.handled} of {count}") from None
    return handled.stop()


async def _asyncio_rounds(
    report: Report, lab: Lab, messages: int, body: bytes, rounds: int
) -> None:
    broker = lab.broker
    plain_queue = broker.plain_queue("aio-plain")
    # Envelope-mq's messages the way envelope-mq sends them: through a topic
    # exchange of the same kind, not straight to the queue.
    same = broker.topology("aio-same")
    same_queue = same.queue
    topology = broker.topology("aio-sealed")
    sealed = Sealer(lab.data_keys, lab.key_id, CONTEXT).seal(
        body, MessageMeta(new_message_id(), int(time.time()))
    )

    def plain_message(i: int) -> aio_pika.Message:
        return aio_pika.Message(
            body, message_id=str(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )

    def same_message(i: int) -> aio_pika.Message:
        return outgoing_message(sealed)

    connection = await aio_pika.connect(broker.url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    publisher = AsyncEncryptedPublisher(
        broker.urls, lab.data_keys, lab.key_id, topology=topology, context=CONTEXT
    )

    def consumer() -> AsyncEncryptedConsumer:
        return AsyncEncryptedConsumer(
            broker.urls, topology, lab.unwrap, prefetch=PREFETCH, ack_batch=_ACK_BATCH
        )

    exchange = channel.default_exchange
    same_exchange = await channel.get_exchange(same.exchange)
    publish: dict[str, Callable[[], Awaitable[_Span]]] = {
        PLAIN: lambda: _plain_publish(exchange, plain_queue, plain_message, messages),
        SAME: lambda: _plain_publish(
            same_exchange, same.binding_key, same_message, messages
        ),
        OURS: lambda: _ours_publish(publisher, body, messages),
    }
    consume: dict[str, Callable[[], Awaitable[_Span]]] = {
        PLAIN: lambda: _plain_consume(channel, plain_queue, messages),
        SAME: lambda: _plain_consume(channel, same_queue, messages),
        OURS: lambda: _ours_consume(consumer, messages),
    }
    queues = {PLAIN: plain_queue, SAME: same_queue, OURS: topology.queue}
    sides = (PLAIN, SAME, OURS)
    published: dict[str, list[_Span]] = {side: [] for side in sides}
    received: dict[str, list[_Span]] = {side: [] for side in sides}
    try:
        async with publisher:
            with Progress("asyncio", rounds * 6, announce=True) as bar:
                for r in range(rounds):
                    order = sides[r % 3 :] + sides[: r % 3]  # rotating
                    for side in order:
                        published[side].append(await publish[side]())
                        await _settled(broker, queues[side], messages)
                        bar.advance()
                    for side in order:
                        received[side].append(await consume[side]())
                        await _settled(broker, queues[side], 0)
                        bar.advance()
    finally:
        await connection.close()
    for what, spans in (("publish", published), ("consume", received)):
        _report_cpu(report, what, spans)
        rates = {side: [span.rate() for span in spans[side]] for side in sides}
        section = f"asyncio: {what}, msg/s"
        for side in sides:
            report.add(section, side, median(rates[side]), "msg/s", rounds=rates[side])
        overall = round_ratios(rates[OURS], rates[PLAIN])
        report.add(
            section,
            f"{OURS} ÷ {PLAIN}",
            median(overall),
            "x",
            rounds=overall,
            note="encryption and client together",
        )
        client = round_ratios(rates[OURS], rates[SAME])
        report.add(
            section,
            f"{OURS} ÷ {SAME}",
            median(client),
            "x",
            rounds=client,
            note="the same messages: what our client costs beyond aio-pika",
        )
        report.check(
            f"asyncio {what} ratio ({OURS} ÷ aio-pika, same messages)",
            median(client),
            ">=",
            0.9,
            "x",
        )


def _report_cpu(report: Report, what: str, spans: dict[str, list[_Span]]) -> None:
    section = f"asyncio: {what}, CPU µs/msg of this process"
    cpu = {side: [span.cpu_us() for span in spans[side]] for side in spans}
    for side, values in cpu.items():
        report.add(section, side, median(values), "µs", rounds=values)
    ratios = round_ratios(cpu[OURS], cpu[SAME])
    report.add(
        section,
        f"{OURS} ÷ {SAME}",
        median(ratios),
        "x",
        rounds=ratios,
        note="the client's own cost per message, steadier than msg/s under load",
    )


# ---- FastStream ----------------------------------------------------------------


async def _faststream_side(
    url: str, queue: str, middlewares: list[Any], body: bytes, count: int, rounds: int
) -> list[float]:
    """Per round: messages/s from the first publish to the last one handled."""
    broker = RabbitBroker(url, middlewares=middlewares, logger=None)
    handled = 0
    done: asyncio.Future[None] | None = None

    @broker.subscriber(
        RabbitQueue(queue, durable=True, arguments={"x-expires": QUEUE_EXPIRES_MS})
    )
    async def handle(data: bytes) -> None:
        nonlocal handled
        handled += 1
        if handled == count and done is not None and not done.done():
            done.set_result(None)

    rates: list[float] = []
    async with broker:
        await broker.start()
        for _ in range(rounds):
            handled = 0
            done = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            for first in range(0, count, _FS_WINDOW):
                await asyncio.gather(
                    *(
                        broker.publish(body, queue, persist=True)
                        for _ in range(min(_FS_WINDOW, count - first))
                    )
                )
            await asyncio.wait_for(done, _PATIENCE)
            rates.append(rate(count, time.perf_counter() - started))
    return rates


async def _faststream_rounds(
    report: Report, lab: Lab, messages: int, body: bytes, rounds: int
) -> None:
    broker = lab.broker
    queues = {
        FS_PLAIN: broker.plain_queue("fs-plain"),
        FS_SEALED: broker.plain_queue("fs-sealed"),
    }
    envelope = EnvelopeMiddleware(
        lab.key_id, data_keys=lab.data_keys, unwrap=lab.unwrap, context=CONTEXT
    )
    rates: dict[str, list[float]] = {FS_PLAIN: [], FS_SEALED: []}
    try:
        with Progress("faststream", rounds * 2, announce=True) as bar:
            for r in range(rounds):
                order = (FS_PLAIN, FS_SEALED) if r % 2 == 0 else (FS_SEALED, FS_PLAIN)
                for side in order:
                    middlewares = [envelope] if side == FS_SEALED else []
                    rates[side] += await _faststream_side(
                        broker.url, queues[side], middlewares, body, messages, 1
                    )
                    bar.advance()
    finally:
        envelope.close()
    section = "faststream: publish to handled, msg/s"
    for side in (FS_PLAIN, FS_SEALED):
        report.add(section, side, median(rates[side]), "msg/s", rounds=rates[side])
    ratios = round_ratios(rates[FS_SEALED], rates[FS_PLAIN])
    report.add(
        section,
        f"{FS_SEALED} ÷ {FS_PLAIN}",
        median(ratios),
        "x",
        rounds=ratios,
        note="what encryption costs a FastStream app end to end",
    )
