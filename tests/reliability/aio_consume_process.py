"""An asyncio consumer process for the kill scenario: JSON lines, flushed before ack.

Usage: python aio_consume_process.py OUTPUT QUEUE EXCHANGE  (settings from the
environment, as ``envelope-mq consume``). SIGTERM stops it gracefully.
"""

from __future__ import annotations

import asyncio
import json
import sys

from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings

from envelope_mq.aio import AsyncEncryptedConsumer


async def main(output: str, queue: str, exchange: str) -> None:
    settings = Settings.from_env()
    topology = Topology(queue=queue, exchange=exchange)
    with open(output, "a", encoding="utf-8") as stream:

        async def handler(message: ReceivedMessage) -> None:
            record = {"message_id": message.message_id, "body": message.body.decode()}
            stream.write(json.dumps(record) + "\n")
            stream.flush()  # written before the acknowledgement, always

        async with AsyncEncryptedConsumer.from_settings(
            settings, topology, prefetch=200
        ) as consumer:
            await consumer.run(handler, stop_on_signals=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
