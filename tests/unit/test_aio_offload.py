"""KMS off the event loop: cache hits stay on the loop, misses go to the pool once."""

from __future__ import annotations

import asyncio
import threading

from envelope_mq.shared.envelope import MessageMeta
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.observability import NULL_METRICS
from fakes import SlowRecordingProvider

from envelope_mq.aio.offload import AsyncSealer, KmsOffload, NeedsKms, loop_openers

KEY = "key-1"


def _meta(i: int) -> MessageMeta:
    return MessageMeta(f"m-{i}", 1_700_000_000)


def test_many_tasks_missing_one_key_make_one_kms_call_off_the_loop() -> None:
    provider = SlowRecordingProvider(KEY)
    offload = KmsOffload(4)
    sealer = AsyncSealer(DataKeyCache(provider), KEY, {"t": "a"}, offload, NULL_METRICS)

    async def run() -> threading.Thread:
        await asyncio.gather(*(sealer.seal(b"x", _meta(i)) for i in range(20)))
        return threading.current_thread()

    try:
        loop_thread = asyncio.run(run())
    finally:
        offload.close()
    assert len(provider.threads) == 1
    assert provider.threads[0] is not loop_thread


def test_opening_misses_in_the_pool_once_then_hits_on_the_loop() -> None:
    provider = SlowRecordingProvider(KEY)
    offload = KmsOffload(2)
    sealer = AsyncSealer(DataKeyCache(provider.inner), KEY, None, offload, NULL_METRICS)
    fast, slow = loop_openers(UnwrapCache(provider))

    async def run() -> list[bytes]:
        sealed = [await sealer.seal(bytes([i]), _meta(i)) for i in range(5)]
        opened = []
        for message in sealed:
            header = fast.parse(message.headers)
            try:
                result = fast.open(message.body, header, message.meta)
            except NeedsKms:  # the unwrap cache missed: KMS, in the pool
                result = await offload.run(
                    lambda m=message, h=header: slow.open(m.body, h, m.meta)
                )
            opened.append(result.plaintext)
        return opened

    try:
        assert asyncio.run(run()) == [bytes([i]) for i in range(5)]
    finally:
        offload.close()
    assert len(provider.threads) == 1
    assert provider.threads[0] is not threading.main_thread()
