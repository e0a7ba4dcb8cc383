"""AsyncEncryptedStage: one pipeline hop on asyncio, as ``EncryptedStage`` does it.

An :class:`AsyncEncryptedConsumer` takes each input (its policies, quarantine,
KMS hold and replay guard, unchanged), the handler (a coroutine function or a
plain one) returns zero or more outputs, an :class:`AsyncEncryptedPublisher`
seals them under the stage's master key and context and publishes them, and
the input is acknowledged only once every output is confirmed. The outputs
get the sync stage's derived message ids and, on wire format v2, the input's
message_id as their authenticated causation id.

The asyncio consumer hands over one input at a time, in order, so each input
costs one confirm round trip: simpler and slower than the sync stage, which
pipelines inputs (docs/pipelines.md). Failures of the outputs:

- a nacked output: the input is requeued (``Retry``: not counted) after a
  pause;
- an output that matches no queue, or a publisher that gave up: the stage
  stops, the input is requeued, and :meth:`run` raises (ConfigError for the
  routing, the BrokerError otherwise);
- no data key (KMS unavailable): the input is requeued after a pause.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from envelope_mq.aio.consumer import AsyncEncryptedConsumer
from envelope_mq.aio.publisher import AsyncEncryptedPublisher
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.decisions import Retry
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    BrokerError,
    ConfigError,
    KmsUnavailableError,
    MessageNackedError,
    MessageUnroutableError,
)
from envelope_mq.shared.kms import KeyProvider
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks
from envelope_mq.stage import StageStats
from envelope_mq.stage_output import output_message_id, outputs_of

__all__ = ["AsyncEncryptedStage", "AsyncStageHandler"]

#: ``handler(message)`` returns (or, a coroutine, resolves to) None, bytes, a
#: StageOutput, or an iterable of them.
AsyncStageHandler = Callable[[ReceivedMessage], Any]


class AsyncEncryptedStage:
    """Hands ``consumer``'s messages through ``handler`` on to ``publisher``.

    ``routing_key`` is where outputs go unless a StageOutput names its own
    (default: the publisher's binding). Use :meth:`from_settings`; :meth:`run`
    connects both sides and closes them when it returns.
    """

    def __init__(
        self,
        consumer: AsyncEncryptedConsumer,
        publisher: AsyncEncryptedPublisher,
        handler: AsyncStageHandler,
        *,
        routing_key: str | None = None,
        pause: Backoff | None = None,
        metrics: MetricsHooks | None = None,
    ) -> None:
        self._consumer = consumer
        self._publisher = publisher
        self._handler = handler
        self._routing_key = routing_key
        self._pause = pause or Backoff(initial=0.2, cap=5.0)
        self._metrics = NULL_METRICS if metrics is None else metrics
        self._key_id = publisher.key_id
        self._causation = publisher.wire_version >= 2
        self._error: BaseException | None = None
        self.stats = StageStats()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        topology: Topology,
        handler: AsyncStageHandler,
        *,
        output: Topology | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
        key_id: str | None = None,
        context: Mapping[str, str] | None = None,
        provider: KeyProvider | None = None,
        prefetch: int = 1000,
        max_deliveries: int = 5,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        metrics: MetricsHooks | None = None,
    ) -> AsyncEncryptedStage:
        """Both sides from ``settings``, as the sync stage's; no I/O.

        The credentials need Decrypt on the inputs' keys and GenerateDataKey
        on ``key_id`` (default ``settings.kms_key_id``).
        """
        consumer = AsyncEncryptedConsumer.from_settings(
            settings,
            topology,
            provider=provider,
            prefetch=prefetch,
            max_deliveries=max_deliveries,
            policy=policy,
            key_policy=key_policy,
            metrics=metrics,
        )
        publisher = AsyncEncryptedPublisher.from_settings(
            settings,
            topology=output,
            exchange=exchange,
            key_id=key_id,
            context=context,
            provider=provider,
            metrics=metrics,
        )
        return cls(
            consumer, publisher, handler, routing_key=routing_key, metrics=metrics
        )

    def stop(self) -> None:
        """Ask :meth:`run` to return once the input in hand is settled."""
        self._consumer.stop()

    async def run(self, count: int | None = None) -> StageStats:
        """Hand on inputs until :meth:`stop`, or until ``count`` were handled.

        Raises:
            ConfigError: an output matched no queue; the input was requeued.
            BrokerError: the publisher gave up (the input was requeued), or
                what ``AsyncEncryptedConsumer.run`` raises.
            KmsCallerError: KMS refuses the stage; inputs stay queued.
        """
        self._error = None
        # Outputs first (an input is only taken when it can be handed on); the
        # consumer is closed on the loop, requeueing what it holds unhandled.
        async with self._publisher, self._consumer:
            consumed = await self._consumer.run(self._hop, count)
        stats = self.stats
        stats.handled = consumed.handled
        stats.quarantined = consumed.quarantined
        stats.requeued = consumed.requeued
        stats.kms_retries = consumed.kms_retries
        stats.reconnects = consumed.reconnects
        if self._error is not None:
            raise self._error
        return stats

    async def _hop(self, message: ReceivedMessage) -> None:
        result = self._handler(message)
        if inspect.isawaitable(result):
            result = await result
        outputs = outputs_of(result)  # ConfigError: a handler error
        futures = []
        try:
            for index, out in enumerate(outputs):
                futures.append(
                    await self._publisher.publish(
                        out.body,
                        routing_key=out.routing_key or self._routing_key,
                        message_id=out.message_id
                        or output_message_id(self._key_id, message.message_id, index),
                        content_type=out.content_type,
                        content_encoding=out.content_encoding,
                        type=out.type,
                        causation_id=message.message_id if self._causation else None,
                    )
                )
        except KmsUnavailableError:
            await self._wait()  # no data key for now: the input comes back
            raise Retry() from None
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if message.redelivered and futures:
            self.stats.repeated_outputs += len(futures)
            self._metrics.stage_repeated_outputs(len(futures))
        if not errors:
            self.stats.outputs += len(futures)
            return
        unroutable = [e for e in errors if isinstance(e, MessageUnroutableError)]
        if unroutable:
            self._fail(
                ConfigError(
                    f"stage stopped: {unroutable[0]}; every input not handed on "
                    "stays in its queue"
                )
            )
        elif all(isinstance(e, MessageNackedError) for e in errors):
            self.stats.outputs_nacked += 1
            await self._wait()
        else:
            first = errors[0]
            self._fail(
                first if isinstance(first, BrokerError) else BrokerError(str(first))
            )
        raise Retry()  # requeued, not counted

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._consumer.stop()

    async def _wait(self) -> None:
        await asyncio.sleep(next(self._pause.delays()))
