"""AsyncEncryptedConsumer: consume, open, hand over and settle, on aio-pika.

The same decision as the sync consumer (``consumer.outcome.admit`` and
``after_handler``), the same quarantine (``<queue>.quarantine``, the same
reason headers, confirmed before the original is acknowledged), the same
KMS-transient hold, replay guard and metrics; only the I/O is asyncio.
Deliveries are taken one at a time, in order; acknowledgements go out in
``multiple`` batches, and within 10 ms whenever no delivery is waiting.

Two forms::

    async with consumer:
        async for message in consumer:   # acknowledged when you ask for the next
            ...

    await consumer.run(handler)           # handler may be async or not

A lost connection is re-established with backoff through the URL list, by
the sync consumer's policy (consumer/reconnects.py: one that keeps dying young
waits longer each time); what was unacknowledged comes back from the broker
(at-least-once). :meth:`stop`, cancellation, or SIGTERM/SIGINT
(``run(..., stop_on_signals=True)``) end it gracefully: what was handled is
acknowledged, the rest is requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

import aio_pika
import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from envelope_mq.aio.broker import (
    CONNECTION_ERRORS,
    connect,
    declare,
    delivery_of_frame,
)
from envelope_mq.aio.offload import (
    DEFAULT_KMS_THREADS,
    CachedKeyUnwrapper,
    KmsOffload,
    NeedsKms,
    loop_openers,
)
from envelope_mq.aio.quarantine import quarantine_copy
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
from envelope_mq.consumer.deliveries import DeliveryCounter
from envelope_mq.consumer.freshness import DEFAULT_MAX_SKEW, ReplayGuard
from envelope_mq.consumer.keypolicy import KeyPolicy, KeyResolver
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import (
    RETRY_LATER,
    EnvelopeOpener,
    Outcome,
    Reason,
    Verdict,
    admit,
    after_handler,
)
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.reconnects import Reconnects
from envelope_mq.consumer.unwrapping import Closeable, unwrapping_from_settings
from envelope_mq.consumer.worker import ConsumerStats
from envelope_mq.shared.amqp import ConnectionOptions, Topology, redact_url, split_urls
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    KmsCallerError,
    MessageNackedError,
    MessageUnroutableError,
)
from envelope_mq.shared.kms import KeyProvider
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks

__all__ = ["AsyncEncryptedConsumer", "AsyncHandler"]

_log = logging.getLogger(__name__)
_COMPONENT = "consumer"
_STOP = object()  # put in the inbox by stop()
# An idle consumer acknowledges what it handled after this long (seconds).
_IDLE_FLUSH = 0.01
_LOST = object()  # put in the inbox when the connection goes

_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
)

AsyncHandler = Callable[[ReceivedMessage], Awaitable[object] | object]


class _InHand:
    """A delivery, its channel and the connection generation it came on.

    aiormq's own delivery, not an aio-pika IncomingMessage: the consumer
    acknowledges by tag on the channel, and skips a task and an object per
    message that aio-pika's consume path would cost.
    """

    __slots__ = ("channel", "generation", "message")

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        channel: aiormq.abc.AbstractChannel,
        generation: int,
    ) -> None:
        self.message = message
        self.channel = channel
        self.generation = generation

    @property
    def tag(self) -> int:
        return getattr(self.message.delivery, "delivery_tag", 0) or 0

    async def requeue(self) -> None:
        await self.channel.basic_nack(self.tag, requeue=True)


class AsyncEncryptedConsumer:
    """Consumes ``topology.queue``, decrypting each message, on asyncio.

    In the handler form the delivery is acknowledged after the handler returns
    and requeued when it raises (up to ``max_deliveries``, then quarantined as
    handler-error), exactly as the sync consumer. In the iterator form a
    message is acknowledged when the loop asks for the next one; leaving the
    loop (break, an exception) leaves the message in hand unacknowledged, and
    closing the consumer requeues it.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        topology: Topology,
        keys: CachedKeyUnwrapper,
        *,
        prefetch: int = 1000,
        ack_batch: int = 50,
        max_deliveries: int = 5,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        key_resolver: KeyResolver | None = None,
        kms_backoff: Backoff | None = None,
        reconnect_backoff: Backoff | None = None,
        connection_options: ConnectionOptions | None = None,
        max_age: float | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        dedup_window: int = 0,
        metrics: MetricsHooks | None = None,
        kms_threads: int = DEFAULT_KMS_THREADS,
    ) -> None:
        if key_policy and not key_policy.resolved and key_resolver is None:
            raise ConfigError(
                "an allowed-key policy needs a key_resolver (DescribeKey) "
                "or resolving first (KeyPolicy.resolve)"
            )
        if topology.is_stream:
            # It would nack a failed handler's message: RabbitMQ closes the
            # connection on a nack on a stream (docs/streams.md).
            raise ConfigError(
                "the asyncio consumer does not read streams: use EncryptedConsumer"
            )
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if prefetch < 1 or ack_batch < 1:
            raise ValueError("prefetch and ack_batch must be at least 1")
        self._urls = split_urls(urls)
        self._topology = topology
        self._metrics = NULL_METRICS if metrics is None else metrics
        fast, slow = loop_openers(keys)
        self._fast: EnvelopeOpener = self._metrics.time_opener(fast)
        self._slow: EnvelopeOpener = self._metrics.time_opener(slow)
        self._offload = KmsOffload(kms_threads)
        self._prefetch = prefetch
        # a batch never holds back more than a quarter of the window
        self._ack_batch = max(1, min(ack_batch, prefetch // 4))
        self._max_deliveries = max_deliveries
        self._policy = policy or ContextPolicy()
        self._kms_backoff = kms_backoff or Backoff(initial=0.2, cap=10.0)
        self._reconnects = Reconnects(
            reconnect_backoff or Backoff(initial=0.5, cap=15.0),
            _log,
            component=_COMPONENT,
            queue=topology.queue,
        )
        self._connection_options = connection_options or ConnectionOptions()
        self._key_policy = key_policy if key_policy else None
        self._key_resolver = key_resolver
        guard = ReplayGuard(
            max_age=max_age, dedup_window=dedup_window, max_skew=max_skew
        )
        self._guard = guard if guard.enabled else None
        self._counter = DeliveryCounter()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._quarantine: aiormq.abc.AbstractChannel | None = None
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._generation = 0
        self._unacked: _InHand | None = None
        self._unacked_count = 0
        self._idle_flush: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._flushing: asyncio.Future[None] | None = None
        self._stopping = False
        self._owned_kms: Closeable | None = None
        self.stats = ConsumerStats()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        topology: Topology,
        *,
        provider: KeyProvider | None = None,
        prefetch: int = 1000,
        ack_batch: int = 50,
        max_deliveries: int = 5,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        kms_backoff: Backoff | None = None,
        reconnect_backoff: Backoff | None = None,
        connection_options: ConnectionOptions | None = None,
        max_age: float | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        dedup_window: int = 0,
        metrics: MetricsHooks | None = None,
        kms_threads: int = DEFAULT_KMS_THREADS,
        max_decrypt_rate: float = DEFAULT_DECRYPT_RATE,
    ) -> AsyncEncryptedConsumer:
        """Wire the KMS client and the unwrap cache from ``settings``; no I/O.

        ``provider`` replaces the KMS client made from ``settings`` (the caller
        keeps closing it). Without it, settings that name more than one KMS
        region make one client and cache per region, as
        :meth:`EncryptedConsumer.from_settings` does. ``max_decrypt_rate``
        bounds the Decrypt calls per second that data keys not in the cache
        may cost (consumer/budget.py). The other arguments are the constructor's.
        """
        hooks = NULL_METRICS if metrics is None else metrics
        # One KMS, or one per region (KMS_REGIONS / KMS_REGION_ENDPOINTS).
        # Only cache misses reach the budget (and they run in the KMS threads).
        wiring = unwrapping_from_settings(
            settings,
            hooks,
            provider=provider,
            max_decrypt_rate=max_decrypt_rate,
            keep_alive=False,
        )
        consumer = cls(
            settings.rabbitmq_urls,
            topology,
            wiring.unwrapper,
            prefetch=prefetch,
            ack_batch=ack_batch,
            max_deliveries=max_deliveries,
            policy=policy,
            key_policy=key_policy,
            key_resolver=wiring.resolver,
            kms_backoff=kms_backoff,
            reconnect_backoff=reconnect_backoff,
            connection_options=connection_options,
            max_age=max_age,
            max_skew=max_skew,
            dedup_window=dedup_window,
            metrics=metrics,
            kms_threads=kms_threads,
        )
        consumer._owned_kms = wiring.owned
        return consumer

    @property
    def topology(self) -> Topology:
        """What this consumer declares and consumes."""
        return self._topology

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect (first URL that answers), declare and start consuming.

        Raises:
            BrokerUnavailableError: no broker URL answered.
            BrokerError: the topology could not be declared.
        """
        if self._connection is not None:
            return
        policy, resolver = self._key_policy, self._key_resolver
        if policy and not policy.resolved and resolver is not None:
            # DescribeKey, once, in a KMS thread: a mistyped key fails here.
            self._key_policy = await self._offload.run(
                functools.partial(policy.resolve, resolver)
            )
            _log.info(
                "allowed master keys: %s",
                ", ".join(self._key_policy.key_ids()),
                extra={"event": "key_policy", "queue": self._topology.queue},
            )
        last: BrokerError | None = None
        for index in range(len(self._urls)):
            try:
                await self._open(index)
                self._metrics.broker_connected(_COMPONENT, reconnect=False)
                return
            except BrokerUnavailableError as exc:
                last = exc
        assert last is not None  # noqa: S101 - at least one URL
        raise last

    def stop(self) -> None:
        """Ask the consumer to end: the message in hand finishes, the rest requeue.

        Call it on the loop (a signal handler installed with
        ``loop.add_signal_handler`` is); from another thread use
        ``loop.call_soon_threadsafe(consumer.stop)``.
        """
        self._stopping = True
        self._inbox.put_nowait(_STOP)

    async def close(self) -> None:
        """Acknowledge what was handled, requeue the rest, disconnect."""
        if self._idle_flush is not None:
            self._idle_flush.cancel()
            self._idle_flush = None
        with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
            if self._flushing is not None:
                await self._flushing
            await self._flush_acks()
        connection, self._connection = self._connection, None
        self._generation += 1  # whatever the old connection still says is stale
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if connection is not None:
            # Closing the channel requeues every unacknowledged delivery.
            with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                await connection.close()
        self._offload.close()
        if self._owned_kms is not None:
            self._owned_kms.close()
        self._metrics.stopped(_COMPONENT)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- the two forms --------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[ReceivedMessage]:
        """Decrypted messages; each is acknowledged when the next is asked for."""
        await self.start()
        while True:
            delivery = await self._next()
            if delivery is None:
                return
            message = await self._admitted(delivery)
            if message is None:
                continue
            yield message
            await self._apply(
                delivery, 1, after_handler(message, None, guard=self._guard)
            )

    async def run(
        self,
        handler: AsyncHandler,
        count: int | None = None,
        *,
        stop_on_signals: bool = False,
    ) -> ConsumerStats:
        """Consume until :meth:`stop` (or a signal), or ``count`` messages handled.

        The handler may be a coroutine function or a plain one (keep plain ones
        quick: they run on the loop). Cancelling the task running this ends it
        like stop(), except that the message in hand is requeued.
        """
        limit = None if count is None else self.stats.handled + count
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if stop_on_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
        try:
            await self.start()
            while limit is None or self.stats.handled < limit:
                delivery = await self._next()
                if delivery is None:
                    break
                await self._one(delivery, handler)
            with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                await self._flush_acks()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        self._stopping = False
        return self.stats

    async def _one(self, delivery: Delivery, handler: AsyncHandler) -> None:
        deliveries = self._counter.deliveries(delivery)
        message = await self._admitted(delivery)
        if message is None:
            return
        error: Exception | None = None
        try:
            result = handler(message)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # the one boundary around user code
            error = exc
        outcome = after_handler(
            message,
            error,
            deliveries=deliveries,
            max_deliveries=self._max_deliveries,
            guard=self._guard,
        )
        await self._apply(delivery, deliveries, outcome)

    # ---- one delivery ---------------------------------------------------------

    async def _admitted(self, delivery: Delivery) -> ReceivedMessage | None:
        """The opened message for the handler, or None once the delivery is settled."""
        self._metrics.consumed()
        decision = await self._admit(delivery)
        if decision is RETRY_LATER:
            decision = await self._hold(delivery)
            if decision is RETRY_LATER:
                return None  # stopping: left unacknowledged, requeued on close
        if isinstance(decision, ReceivedMessage):
            return decision
        await self._apply(delivery, 1, decision)
        return None

    async def _admit(self, delivery: Delivery) -> ReceivedMessage | Outcome:
        try:
            return admit(
                delivery,
                self._fast,
                policy=self._policy,
                key_policy=self._key_policy,
                guard=self._guard,
            )
        except NeedsKms:
            pass  # the unwrap cache missed: KMS, in a thread
        return await self._offload.run(
            functools.partial(
                admit,
                delivery,
                self._slow,
                policy=self._policy,
                key_policy=self._key_policy,
                guard=self._guard,
            )
        )

    async def _hold(self, delivery: Delivery) -> ReceivedMessage | Outcome:
        """Retry ``delivery`` with backoff while KMS is unavailable (held, unacked)."""
        await self._flush_acks()  # what was handled before the outage is done
        _log.warning(
            "KMS unavailable; holding message %s and retrying with backoff",
            delivery.message_id,
            extra={
                "event": "kms_unavailable",
                "queue": self._topology.queue,
                "message_id": delivery.message_id,
            },
        )
        decision: ReceivedMessage | Outcome = RETRY_LATER
        for delay in self._kms_backoff.delays():
            self._metrics.alive(_COMPONENT)  # held, not stuck
            await self._sleep(delay)
            if self._stopping:
                break
            self.stats.kms_retries += 1
            self._metrics.kms_retry()
            decision = await self._admit(delivery)
            if decision is not RETRY_LATER:
                _log.info(
                    "KMS answers again; resuming",
                    extra={"event": "kms_recovered", "queue": self._topology.queue},
                )
                break
        return decision

    async def _apply(
        self, delivery: Delivery, deliveries: int, outcome: Outcome
    ) -> None:
        held = delivery.raw
        assert isinstance(held, _InHand)  # noqa: S101
        if self._stale(held):
            return  # its channel is gone: the broker delivers it again
        verdict = outcome.verdict
        try:
            if verdict is Verdict.ACK:
                await self._ack(held)
                self._counter.settled(delivery)
                self.stats.handled += 1
                self._metrics.handled()
            elif verdict is Verdict.DUPLICATE:  # replay protection: done before
                await self._ack(held)
                self._counter.settled(delivery)
                self.stats.duplicates_dropped += 1
                self._metrics.duplicate_dropped()
            elif verdict is Verdict.REQUEUE:
                self._counter.failed(delivery, deliveries)
                await held.requeue()
                self.stats.requeued += 1
                self._metrics.requeued()
            elif verdict is Verdict.RETRY:  # the handler raised Retry: not counted
                self._counter.retried(delivery)
                await held.requeue()
                self.stats.retried += 1
                self._metrics.requeued()
            elif verdict is Verdict.HALT:  # KMS refuses us, not the message
                await held.requeue()
                raise self._halted(outcome)
            else:
                await self._quarantine_one(delivery, held, outcome)
        except CONNECTION_ERRORS as exc:
            self._lose(exc)  # unsettled: it comes back after the reconnect

    def _halted(self, outcome: Outcome) -> KmsCallerError:
        """Say once why KMS refuses this consumer; the error run() raises."""
        text = (
            f"KMS refuses this consumer: {outcome.kms_code} "
            f"(likely cause: {outcome.cause or 'its configuration'}); "
            f"stopped, every message left in {self._topology.queue!r}"
        )
        _log.error(
            text,
            extra={
                "event": "consumer_halted",
                "queue": self._topology.queue,
                "kms_code": outcome.kms_code,
            },
        )
        self._metrics.halted(_COMPONENT, f"{outcome.kms_code}: {outcome.cause}")
        return KmsCallerError(text, code=outcome.kms_code, cause=outcome.cause)

    async def _quarantine_one(
        self,
        delivery: Delivery,
        held: _InHand,
        outcome: Outcome,
    ) -> None:
        reason = outcome.reason or Reason.MALFORMED
        fields: dict[str, object] = {
            "event": "message_quarantined",
            "queue": self._topology.queue,
            "message_id": delivery.message_id,
            "reason": str(reason),
        }
        if outcome.kms_code:
            fields["kms_code"] = outcome.kms_code
        if outcome.detail:
            fields["detail"] = outcome.detail
        _log.warning(
            "quarantining message %s from %r: %s%s",
            delivery.message_id,
            self._topology.queue,
            reason,
            f" ({outcome.kms_code})" if outcome.kms_code else "",
            extra=fields,
        )
        copy = quarantine_copy(
            held.message.header.properties,
            delivery.defects,  # what aio/frames.py had to drop
            outcome,
            self._topology.queue,
            time.time(),
        )
        channel = self._quarantine
        assert channel is not None  # noqa: S101 - set with the connection
        try:
            confirmation = await channel.basic_publish(
                held.message.body,
                routing_key=self._topology.quarantine_queue,
                properties=copy,
                mandatory=True,
            )
            if isinstance(confirmation, aiormq.abc.DeliveredMessage):
                raise aiormq.exceptions.PublishError(confirmation, confirmation)
            if confirmation is not None and not isinstance(confirmation, Basic.Ack):
                raise aiormq.exceptions.DeliveryError(None, confirmation)
        except aiormq.exceptions.PublishError as exc:
            raise MessageUnroutableError(
                f"quarantine {delivery.message_id}: no quarantine queue"
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise MessageNackedError(
                f"quarantine {delivery.message_id}: the broker nacked the copy"
            ) from exc
        # Confirmed: now the original may go.
        await self._ack(held)
        self._counter.settled(delivery)
        self.stats.quarantined[str(reason)] += 1
        self._metrics.quarantined(str(reason))

    # ---- acknowledgements -----------------------------------------------------

    async def _ack(self, held: _InHand) -> None:
        self._unacked = held
        self._unacked_count += 1
        if self._unacked_count >= self._ack_batch:
            # Awaited until written: aiormq drops what is still queued for its
            # writer when the connection closes (a lost ack: a redelivery).
            await self._flush_acks()

    def _flush_when_idle(self) -> None:
        self._idle_flush = None
        if self._unacked is not None:
            self._flushing = asyncio.ensure_future(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self._flush_acks()
        except CONNECTION_ERRORS as exc:
            self._lose(exc)

    async def _flush_acks(self) -> None:
        held, self._unacked = self._unacked, None
        self._unacked_count = 0
        if held is not None and not self._stale(held):
            await held.channel.basic_ack(held.tag, multiple=True)

    def _stale(self, held: _InHand) -> bool:
        return held.generation != self._generation

    # ---- the connection -------------------------------------------------------

    async def _next(self) -> Delivery | None:
        """The next delivery in order; None once stopping."""
        while not self._stopping:
            try:
                item = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                # Nothing waiting: what was handled goes out unless the next
                # delivery comes within _IDLE_FLUSH (flushing at once would
                # cost an ack frame per message whenever we keep up).
                if self._unacked is not None and self._idle_flush is None:
                    self._idle_flush = asyncio.get_running_loop().call_later(
                        _IDLE_FLUSH, self._flush_when_idle
                    )
                self._metrics.alive(_COMPONENT)
                item = await self._inbox.get()
            if item is _STOP:
                break
            if item is _LOST:
                await self._reconnect()
                continue
            assert isinstance(item, _InHand)  # noqa: S101
            if self._stale(item):
                continue  # from a connection already lost: it is redelivered
            return delivery_of_frame(item.message, item)
        return None

    async def _open(self, index: int) -> None:
        url = self._urls[index]
        connection = await connect(url, self._connection_options)
        generation = self._generation + 1
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self._prefetch)
            await declare(channel, self._topology)
            confirms = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            raw = await channel.get_underlay_channel()
            quarantine = await confirms.get_underlay_channel()

            async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                self._inbox.put_nowait(_InHand(message, raw, generation))

            await raw.basic_consume(self._topology.queue, on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                await connection.close()
            raise
        self._generation = generation
        self._connection = connection
        self._quarantine = quarantine
        self._reconnects.connected()
        connection.close_callbacks.add(
            lambda _conn, exc=None: self._lose(exc, generation)
        )

    def _lose(self, error: BaseException | None, generation: int | None = None) -> None:
        if generation is not None and generation != self._generation:
            return
        old = self._connection
        if old is None:
            return
        self._connection = None
        # Closed here, on the loop: a lost connection left to the garbage
        # collector would try to close itself from wherever that runs.
        closing = asyncio.ensure_future(self._close_quietly(old))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        self._generation += 1  # every delivery in hand is now stale
        self._unacked, self._unacked_count = None, 0
        cause = type(error).__name__ if error else ""
        self._metrics.broker_lost(_COMPONENT, cause)
        self._reconnects.lost(cause or "connection closed")
        self._inbox.put_nowait(_LOST)

    @staticmethod
    async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
        with contextlib.suppress(*_BROKER_ERRORS):
            await connection.close()

    async def _reconnect(self) -> None:
        if self._connection is not None:
            return  # a _LOST already dealt with
        # Deliveries of the old connection still queued are stale: drop them.
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is _STOP:
                self._stopping = True
        where = ", ".join(redact_url(u) for u in self._urls)
        reconnects = self._reconnects
        await self._sleep(reconnects.pause())
        index = 0
        for delay in reconnects.delays():
            if self._stopping:
                return
            try:
                await self._open(index % len(self._urls))
            except BrokerUnavailableError as exc:
                index += 1
                reconnects.failed(exc, delay)
                await self._sleep(delay)
                continue
            except _BROKER_ERRORS as exc:
                index += 1
                reconnects.failed(type(exc).__name__, delay)
                await self._sleep(delay)
                continue
            self.stats.reconnects += 1
            self._metrics.broker_connected(_COMPONENT, reconnect=True)
            reconnects.reconnected(where)
            return

    async def _sleep(self, seconds: float) -> None:
        # Short naps, so that stop() is seen within a tenth of a second.
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            self._metrics.alive(_COMPONENT)  # waiting, not stuck
            await asyncio.sleep(min(0.1, left))

    def __repr__(self) -> str:
        return f"AsyncEncryptedConsumer(queue={self._topology.queue!r})"
