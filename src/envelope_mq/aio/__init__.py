"""asyncio: an aio-pika publisher and consumer on the same envelope core.

Install with ``pip install 'envelope-mq[aio]'``. See docs/asyncio.md.
"""

from __future__ import annotations

from envelope_mq.aio.consumer import AsyncEncryptedConsumer, AsyncHandler
from envelope_mq.aio.publisher import AsyncEncryptedPublisher
from envelope_mq.aio.stage import AsyncEncryptedStage, AsyncStageHandler

__all__ = [
    "AsyncEncryptedConsumer",
    "AsyncEncryptedPublisher",
    "AsyncEncryptedStage",
    "AsyncHandler",
    "AsyncStageHandler",
]
