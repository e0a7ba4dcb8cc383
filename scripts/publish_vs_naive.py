"""Compare the encrypted, confirmed publisher with a naive plaintext pika loop.

Not a test and not the benchmark (issue 5): a quick check of the producer's
speed target. Both publish persistent 1 KiB messages to the same kind of queue
on the same broker, interleaved round by round so machine noise hits both.
The naive loop is a BlockingConnection ``basic_publish`` loop WITHOUT confirms;
the encrypted one seals each message (real AES-GCM, in-memory KMS) and waits
for every confirm. A third side, the reference, is plain pika at its best with
the same messages: a SelectConnection publishing every message at once (same
sealed bodies and headers, same exchange, mandatory) and waiting for the
confirms. It shows what the broker allows for such messages with confirms.

    .venv/bin/python scripts/publish_vs_naive.py [--count 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import pika
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import InMemoryKeyProvider

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY = b"x" * 1024


def naive(count: int, queue: str) -> float:
    """Messages per second of a plaintext BlockingConnection loop, no confirms."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    properties = pika.BasicProperties(delivery_mode=2)
    start = time.perf_counter()
    for _ in range(count):
        channel.basic_publish("", queue, BODY, properties)
    elapsed = time.perf_counter() - start
    connection.close()
    return count / elapsed


def encrypted(count: int, topology: Topology) -> float:
    """Messages per second of EncryptedPublisher, every confirm awaited."""
    cache = DataKeyCache(InMemoryKeyProvider())
    with EncryptedPublisher(URL, cache, "bench-key", topology=topology) as publisher:
        publisher.send(b"warm-up")  # first data key, connection, declare
        start = time.perf_counter()
        futures = [publisher.publish(BODY) for _ in range(count)]
        publisher.flush()
        elapsed = time.perf_counter() - start
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise SystemExit(f"{failed} publishes failed")
    return count / elapsed


def reference(count: int, topology: Topology) -> float:
    """Messages per second of raw pika publishing our messages, all pipelined."""
    sealer = Sealer(DataKeyCache(InMemoryKeyProvider()), "bench-key")
    sealed = sealer.seal(BODY, MessageMeta(str(uuid.uuid4()), int(time.time())))
    properties = pika.BasicProperties(
        delivery_mode=2,
        message_id=sealed.meta.message_id,
        timestamp=sealed.meta.timestamp,
        headers=sealed.headers,
    )
    state = {"acked": 0, "started": 0.0, "elapsed": 0.0}

    def on_ack(frame: Any) -> None:
        method = frame.method
        state["acked"] = method.delivery_tag if method.multiple else state["acked"] + 1
        if state["acked"] >= count:
            state["elapsed"] = time.perf_counter() - state["started"]
            connection.close()

    def on_confirm_mode(channel: Any) -> None:
        state["started"] = time.perf_counter()
        for _ in range(count):
            channel.basic_publish(
                topology.exchange, topology.binding_key, sealed.body, properties, True
            )

    def on_channel(channel: Any) -> None:
        channel.confirm_delivery(on_ack, callback=lambda _: on_confirm_mode(channel))

    connection = pika.SelectConnection(
        pika.URLParameters(URL),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
    return count / state["elapsed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    topology = Topology(
        f"emq-compare-{tag}",
        exchange=f"emq-compare-x-{tag}",
        queue_arguments={"x-expires": 120_000},
        exchange_auto_delete=True,
    )
    admin = connect_blocking(URL)
    channel = admin.channel()
    naive_queue = f"emq-compare-naive-{tag}"
    channel.queue_declare(naive_queue, durable=True, arguments={"x-expires": 120_000})
    topology.declare(channel)
    rates: dict[str, list[float]] = {"naive": [], "encrypted": [], "reference": []}
    try:
        for n in range(args.rounds):
            # Alternate who goes first, so neither always gets the quieter slot.
            sides = ["naive", "encrypted", "reference"]
            for name in sides[n % 3 :] + sides[: n % 3]:
                if name == "naive":
                    rate = naive(args.count, naive_queue)
                elif name == "encrypted":
                    rate = encrypted(args.count, topology)
                else:
                    rate = reference(args.count, topology)
                rates[name].append(rate)
                print(f"round {n + 1} {name:9s} {rate:9.0f} msg/s", flush=True)
                channel.queue_purge(naive_queue)
                channel.queue_purge(topology.queue)
    finally:
        for queue in (naive_queue, topology.queue, topology.quarantine_queue):
            channel.queue_delete(queue)
        admin.close()
    naive_median = statistics.median(rates["naive"])
    encrypted_median = statistics.median(rates["encrypted"])
    reference_median = statistics.median(rates["reference"])
    print(
        f"median: naive {naive_median:.0f} msg/s, encrypted+confirmed "
        f"{encrypted_median:.0f} msg/s, reference {reference_median:.0f} msg/s\n"
        f"encrypted / naive {encrypted_median / naive_median:.2f}, "
        f"encrypted / reference {encrypted_median / reference_median:.2f}"
    )


if __name__ == "__main__":
    main()
