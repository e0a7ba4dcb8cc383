"""Consumer speed check (not a test): envelope-mq consumer vs a plain pika consumer.

Same broker, same run, interleaved rounds. Both consume N persistent 1 KiB
messages with manual acks and prefetch 1,000; the plain consumer acks each
message, ours decrypts each and acks in small batches. Keys come from an
in-memory provider: this measures the consume path, not KMS.

    .venv/bin/python scripts/compare_consumer.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import pika
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider

URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def fill(channel: object, queue: str, n: int, sealer: Sealer | None) -> None:
    payload = os.urandom(1024)
    now = int(time.time())
    for i in range(n):
        mid = f"m-{i}"
        if sealer is None:
            body, headers = payload, {}
        else:
            sealed = sealer.seal(payload, MessageMeta(mid, now))
            body, headers = sealed.body, sealed.headers
        props = pika.BasicProperties(
            delivery_mode=2, message_id=mid, timestamp=now, headers=headers
        )
        channel.basic_publish("", queue, body, props)  # type: ignore[attr-defined]
    # basic_publish without confirms returns before the broker has stored the
    # messages: wait until they are all queued, so consuming is all we time.
    while channel.queue_declare(queue, passive=True).method.message_count < n:  # type: ignore[attr-defined]
        time.sleep(0.05)
    time.sleep(0.5)


def plain_consume(channel: object, queue: str, n: int) -> float:
    seen = 0

    def on_message(ch: object, method: object, _props: object, _body: bytes) -> None:
        nonlocal seen
        seen += 1
        ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        if seen >= n:
            ch.stop_consuming()  # type: ignore[attr-defined]

    channel.basic_qos(prefetch_count=1000)  # type: ignore[attr-defined]
    tag = channel.basic_consume(queue, on_message)  # type: ignore[attr-defined]
    start = time.perf_counter()
    channel.start_consuming()  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    channel.basic_cancel(tag)  # type: ignore[attr-defined]
    return n / elapsed


def ours_consume(queue: str, n: int, opener: Opener, ack_batch: int) -> float:
    def handler(_message: ReceivedMessage) -> None:
        pass

    consumer = EncryptedConsumer(
        URL,
        Topology(
            queue,
            exchange=f"{queue}-x",
            queue_arguments={"x-expires": 600_000},
            exchange_auto_delete=True,
        ),
        opener,
        handler,
        prefetch=1000,
        ack_batch=ack_batch,
    )
    start = time.perf_counter()
    stats = consumer.run(count=n)
    elapsed = time.perf_counter() - start
    if stats.handled != n:
        raise SystemExit(f"consumed {stats.handled} of {n}: {stats}")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ack-batch", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()

    provider = InMemoryKeyProvider(["k"])
    sealer = Sealer(DataKeyCache(provider), "k", {"tenant": "a"})
    opener = Opener(UnwrapCache(provider))
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    queue = f"speed-{uuid.uuid4().hex[:8]}"
    Topology(
        queue,
        exchange=f"{queue}-x",
        queue_arguments={"x-expires": 600_000},
        exchange_auto_delete=True,
    ).declare(channel)
    rates: dict[str, list[float]] = {"plain": []}
    rates.update({f"ours(ack_batch={b})": [] for b in args.ack_batch})
    for _ in range(args.rounds):
        fill(channel, queue, args.messages, None)
        rates["plain"].append(plain_consume(channel, queue, args.messages))
        for batch in args.ack_batch:
            fill(channel, queue, args.messages, sealer)
            rate = ours_consume(queue, args.messages, opener, batch)
            rates[f"ours(ack_batch={batch})"].append(rate)
    channel.queue_delete(queue)
    channel.queue_delete(queue + ".quarantine")
    connection.close()
    base = statistics.median(rates["plain"])
    for name, values in rates.items():
        median = statistics.median(values)
        # Per-round ratios pair each run with the plain run next to it, which
        # cancels most of the noise of a shared machine.
        ratios = [v / p for v, p in zip(values, rates["plain"], strict=True)]
        print(
            f"{name:>20}: {median:9.0f} msg/s  median ratio "
            f"{statistics.median(ratios):.2f} (of medians {median / base:.2f})  "
            f"per round {[round(r, 2) for r in ratios]}"
        )


if __name__ == "__main__":
    main()
