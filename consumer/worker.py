"""EncryptedConsumer: consume, open, hand over, and settle every delivery.

The loop pulls deliveries off the transport in order, asks
:func:`~consumer.outcome.handle` how each ends, and applies that:

- ACK: acknowledged (in small ``multiple`` batches, after the handler returned);
- DUPLICATE: acknowledged without calling the handler (replay protection);
- REQUEUE: nacked back to the queue, counted against ``max_deliveries``;
- RETRY (the handler raised ``Retry``): nacked back to the queue, not counted;
- QUARANTINE: copied to ``<queue>.quarantine`` with a reason header,
  confirmed, then acknowledged — never requeued, never a hot loop;
- HALT (KMS refuses the consumer itself: credentials, clock, permission for a
  key its policy lists): the loop stops and run() raises KmsCallerError;
  every message not handled stays in the queue, nothing is quarantined;
- RETRY_LATER (KMS unavailable): held unacknowledged while the loop backs off,
  servicing heartbeats, and retries the same message until KMS answers.

On a stream (``topology.queue_type == "stream"``) nothing can be requeued:
REQUEUE and RETRY run the handler again in place, with backoff (REQUEUE still
counted against ``max_deliveries``), and the :class:`StreamCursor` follows the
offset of every delivery settled (consumer/streams.py).

A lost connection is re-established with backoff through the broker URL list;
what was unacknowledged comes back from the broker (at-least-once).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn, Self

from envelope_mq.consumer.ahead import DEFAULT_AHEAD_WORKERS, UnwrapAhead
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
from envelope_mq.consumer.deliveries import DeliveryCounter
from envelope_mq.consumer.freshness import DEFAULT_MAX_SKEW, ReplayGuard
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.keypolicy import KEY_IDS_ONLY, KeyPolicy, KeyResolver
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.outcome import (
    RETRY_LATER,
    EnvelopeOpener,
    Handler,
    Outcome,
    Reason,
    Verdict,
    handle,
)
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.runloop import RunLoop
from envelope_mq.consumer.streams import StreamCursor
from envelope_mq.consumer.transport import BlockingTransport
from envelope_mq.consumer.unwrapping import Closeable, unwrapping_from_settings
from envelope_mq.shared.amqp import ConnectionOptions, Topology, split_urls
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import EnvelopeHeader, KeyUnwrapper, Opener
from envelope_mq.shared.errors import (
    BrokerUnavailableError,
    ConfigError,
    KmsCallerError,
)
from envelope_mq.shared.kms import KeyProvider
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks

__all__ = ["ConsumerStats", "EncryptedConsumer"]

logger = logging.getLogger(__name__)

# How long an idle consumer waits for deliveries before it looks at stop().
_POLL_SECONDS = 0.25
_COMPONENT = "consumer"  # in metrics labels, health checks and log lines
# Verdicts after which a delivery is done with: a stream position may pass it.
_SETTLED = frozenset({Verdict.ACK, Verdict.DUPLICATE, Verdict.QUARANTINE})
# What a stream cannot requeue: the handler runs again in place instead.
_IN_PLACE = frozenset({Verdict.REQUEUE, Verdict.RETRY})


@dataclass
class ConsumerStats:
    """Counts since the consumer was made; read them after (or during) ``run``."""

    handled: int = 0
    requeued: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    kms_retries: int = 0
    reconnects: int = 0
    duplicates_dropped: int = 0  # replay protection: seen within the window
    retried: int = 0  # requeued because the handler raised Retry (not counted)


class EncryptedConsumer:
    """Consumes ``topology.queue``, decrypting each message for ``handler``.

    ``handler(message)`` gets a :class:`~consumer.message.ReceivedMessage`; the
    delivery is acknowledged after it returns, requeued when it raises (up to
    ``max_deliveries`` deliveries, then quarantined as handler-error). The
    handler decides otherwise by raising :class:`~consumer.decisions.Reject`
    (quarantine now) or :class:`~consumer.decisions.Retry` (requeue, not
    counted). Run the
    loop with :meth:`run`; :meth:`stop` ends it gracefully from a signal
    handler, another thread or the handler itself.

    The constructor does no I/O. :meth:`connect` (or entering the ``with``
    block) connects, declares the topology and starts consuming; deliveries
    then wait in the prefetch window until :meth:`run`, and the connection
    stays open between runs until :meth:`close`. A :meth:`run` on a consumer
    not connected connects first and disconnects when it returns. pika's
    connection belongs to one thread: connect, run and close in the same one.

    The handler runs in the thread that services the broker connection, so it
    should return well within the heartbeat timeout (30 s by default; see
    ``ConnectionOptions``). KMS calls do not have this limit when the provider
    is wrapped in a :class:`KeepAliveProvider` passed as ``keep_alive`` (as
    :meth:`from_settings` does): the connection is serviced while they run.

    ``metrics`` (a ``shared.observability.Metrics``) records every outcome,
    the connection's state and the loop's liveness; without it nothing is
    recorded and nothing is spent on it.

    A stream topology is read from where ``stream`` (a
    :class:`~consumer.streams.StreamCursor`) says: its offset spec the first
    time, then after the offset last committed to its store. Without one the
    consumer reads from ``next`` and keeps its position in memory only.

    Given the opener's ``key_cache``, the data keys of deliveries waiting in
    the prefetch window are unwrapped ahead on ``unwrap_ahead`` helper threads
    (consumer/ahead.py; by default on a stream only, where a replay meets a
    new data key every few thousand messages at full speed; 0 turns it off).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        topology: Topology,
        opener: EnvelopeOpener,
        handler: Handler,
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
        keep_alive: KeepAliveProvider | None = None,
        max_age: float | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        dedup_window: int = 0,
        metrics: MetricsHooks | None = None,
        stream: StreamCursor | None = None,
        key_cache: KeyUnwrapper | None = None,
        unwrap_ahead: int | None = None,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if stream is not None and not topology.is_stream:
            raise ConfigError(
                f"a stream position needs a stream queue, not {topology.queue_type}"
            )
        self._urls = split_urls(urls)
        self._topology = topology
        self._metrics = NULL_METRICS if metrics is None else metrics
        # Timed one open in N when metrics are on; the opener itself otherwise.
        self._opener: EnvelopeOpener = self._metrics.time_opener(opener)
        self._handler = handler
        self._max_deliveries = max_deliveries
        self._policy = policy or ContextPolicy()
        # Resolved once, at the first connect (DescribeKey for each key named);
        # without DescribeKey, keys must be named by id or key ARN.
        self._key_policy = key_policy if key_policy else None
        self._key_resolver = key_resolver or KEY_IDS_ONLY
        self._kms_backoff = kms_backoff or Backoff(initial=0.2, cap=10.0)
        self._transport = BlockingTransport(
            self._urls,
            topology,
            prefetch=prefetch,
            # a batch never holds back more than a quarter of the window
            ack_batch=max(1, min(ack_batch, prefetch // 4)),
            options=connection_options,
            cursor=stream,
        )
        #: The stream position (None unless the queue is a stream).
        self.cursor = self._transport.cursor
        if unwrap_ahead is None:
            unwrap_ahead = DEFAULT_AHEAD_WORKERS if topology.is_stream else 0
        self._ahead = (
            UnwrapAhead(opener, key_cache, self._worth_a_decrypt, workers=unwrap_ahead)
            if key_cache is not None and unwrap_ahead > 0
            else None
        )
        self._counter = DeliveryCounter()
        self._owned_kms: Closeable | None = None  # made by from_settings
        self._limit: int | None = None
        self.stats = ConsumerStats()
        # Connect, reconnect with backoff, stop (consumer/runloop.py).
        self._loop = RunLoop(
            self._transport,
            self._urls,
            component=_COMPONENT,
            queue=topology.queue,
            metrics=self._metrics,
            backoff=reconnect_backoff,
            keep_alive=keep_alive,
            stats=self.stats,
            log=logger,
        )
        # Replay protection (consumer/freshness.py); off unless asked for.
        guard = ReplayGuard(
            max_age=max_age, dedup_window=dedup_window, max_skew=max_skew
        )
        self._guard = guard if guard.enabled else None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        topology: Topology,
        handler: Handler,
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
        max_decrypt_rate: float = DEFAULT_DECRYPT_RATE,
        stream: StreamCursor | None = None,
        unwrap_ahead: int | None = None,
    ) -> EncryptedConsumer:
        """Wire the KMS client, the unwrap cache and the opener from ``settings``.

        Does no I/O; :meth:`connect`, ``with`` or :meth:`run` connects.
        ``provider`` replaces the KMS client made from ``settings`` (the caller
        keeps closing it). Without it, settings that name more than one KMS
        region (``kms_regions``, ``kms_region_endpoints``) make one client and
        one unwrap cache per region, asked in that order (shared/regions.py).
        With ``metrics``, KMS calls and the cache are
        recorded too. ``max_decrypt_rate`` bounds the KMS Decrypt calls per
        second that data keys not in the cache may cost (consumer/budget.py).
        The other arguments are the constructor's.
        """
        hooks = NULL_METRICS if metrics is None else metrics
        # One KMS, or one per region (KMS_REGIONS / KMS_REGION_ENDPOINTS).
        # Only cache misses reach the budget: a flood of unknown wrapped keys
        # waits its turn instead of spending the KMS quota (budget.py).
        wiring = unwrapping_from_settings(
            settings,
            hooks,
            provider=provider,
            max_decrypt_rate=max_decrypt_rate,
            keep_alive=True,
        )
        owned = wiring.owned
        try:
            consumer = cls(
                settings.rabbitmq_urls,
                topology,
                Opener(wiring.unwrapper),
                handler,
                prefetch=prefetch,
                ack_batch=ack_batch,
                max_deliveries=max_deliveries,
                policy=policy,
                key_policy=key_policy,
                key_resolver=wiring.resolver,
                kms_backoff=kms_backoff,
                reconnect_backoff=reconnect_backoff,
                connection_options=connection_options,
                keep_alive=wiring.keep_alive,
                max_age=max_age,
                max_skew=max_skew,
                dedup_window=dedup_window,
                metrics=metrics,
                stream=stream,
                key_cache=wiring.unwrapper,
                unwrap_ahead=unwrap_ahead,
            )
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        consumer._owned_kms = owned  # its sockets are released by close()
        return consumer

    @property
    def topology(self) -> Topology:
        """What this consumer declares and consumes."""
        return self._topology

    def connect(self) -> Self:
        """Connect, declare the topology and start consuming; returns the consumer.

        Does nothing when already connected.

        Raises:
            KmsError: a key of the allowed-key policy could not be resolved
                (DescribeKey: no such key, or the credentials are refused).
            BrokerUnavailableError: no broker could be reached.
            BrokerError: the topology could not be declared (e.g. a queue
                exists with other arguments).
        """
        if self._loop.connected:
            return self
        resolver = self._key_resolver
        if self._key_policy and not self._key_policy.resolved and resolver:
            self._key_policy = self._key_policy.resolve(resolver)
            logger.info(
                "allowed master keys: %s",
                ", ".join(self._key_policy.key_ids()),
                extra={"event": "key_policy", "queue": self._topology.queue},
            )
        self._loop.open()
        return self

    def close(self) -> None:
        """Requeue what is held but unhandled, disconnect, release the KMS client.

        Never raises; idempotent. A later :meth:`connect` or :meth:`run`
        connects again.
        """
        was_connected = self._loop.close()
        self._commit_position()
        if self._ahead is not None:
            self._ahead.close()
        if self._owned_kms is not None:
            # Releases the KMS client's pooled sockets; a later run() opens
            # new ones.
            self._owned_kms.close()
        if was_connected:
            self._metrics.stopped(_COMPONENT)

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return: the message in hand finishes, the rest requeue.

        Safe from a signal handler or another thread: it only sets a flag. A
        stop() that comes before :meth:`run` makes the next run return at once.
        """
        self._loop.stop()

    def run(self, count: int | None = None) -> ConsumerStats:
        """Consume until :meth:`stop`, or until ``count`` messages were handled.

        Connects first when not connected (see :meth:`connect`), and then
        disconnects when it returns.

        Raises:
            KmsCallerError: KMS refuses this consumer itself (credentials,
                clock, or no permission for a key its policy lists); every
                message not handled stays in the queue.
            BrokerUnavailableError: the first connection could not be made.
            BrokerError: the topology could not be declared (e.g. a queue exists
                with other arguments).
        """
        self._limit = None if count is None else self.stats.handled + count
        transport = self._transport
        self._loop.run(
            self.connect,
            lambda: self._consume(transport),
            self.close,
            reached_limit=self._reached_limit,
        )
        return self.stats

    def _reached_limit(self) -> bool:
        return self._limit is not None and self.stats.handled >= self._limit

    def _consume(self, transport: BlockingTransport) -> None:
        pending = transport.pending
        with transport.errors():
            while not self._loop.stopping:
                if not pending:
                    # Reached at least once per prefetch window, busy or idle.
                    self._metrics.alive(_COMPONENT)
                    transport.flush_acks()
                    self._commit_position()
                    transport.pump(_POLL_SECONDS)
                    if not transport.consuming:
                        raise BrokerUnavailableError(
                            "the broker cancelled our consumer"
                        )
                    continue
                if self._ahead is not None:
                    self._ahead.look(pending)
                    self._ahead.taken()
                self._settle(transport, pending.popleft())
                if self._limit is not None and self.stats.handled >= self._limit:
                    break
            transport.flush_acks()

    def _settle(self, transport: BlockingTransport, delivery: Delivery) -> None:
        self._metrics.consumed()
        deliveries = self._counter.deliveries(delivery) if delivery.redelivered else 1
        outcome = self._outcome(delivery, deliveries)
        verdict = outcome.verdict
        if verdict is Verdict.ACK:
            if self.cursor is not None:
                # Before the ack, which may fail on a lost connection: handled
                # is settled on a stream, where an ack only returns credit.
                self.cursor.settled(delivery.headers)
            transport.ack(delivery)
            self.stats.handled += 1
            self._metrics.handled()
            if delivery.redelivered:
                self._counter.settled(delivery)
            return
        while True:  # until the delivery is settled, or we are stopping
            verdict = outcome.verdict
            if verdict is Verdict.RETRY_LATER:
                outcome = self._hold(transport, delivery, deliveries)
                if outcome.verdict is Verdict.RETRY_LATER:
                    return  # stopping
            elif self.cursor is not None and verdict in _IN_PLACE:
                outcome, deliveries = self._retry_in_place(
                    transport, delivery, deliveries, outcome
                )
                if outcome.verdict in _IN_PLACE:
                    return  # stopping: the position stays before this delivery
            else:
                break
        self._apply_settled(transport, delivery, deliveries, outcome)

    def _retry_in_place(
        self,
        transport: BlockingTransport,
        delivery: Delivery,
        deliveries: int,
        outcome: Outcome,
    ) -> tuple[Outcome, int]:
        """A stream's requeue: run the handler again on the same delivery.

        A stream cannot take a message back, and skipping it would lose it;
        so the delivery is tried again here, after the backoff, each REQUEUE
        counted against ``max_deliveries`` (after which it is quarantined as
        handler-error), each RETRY not. Later deliveries wait, as they would
        behind a requeued message at the head of a queue.
        """
        delays = self._kms_backoff.delays()
        while outcome.verdict in _IN_PLACE:
            if outcome.verdict is Verdict.REQUEUE:
                self.stats.requeued += 1
                deliveries += 1
            else:
                self.stats.retried += 1
            self._metrics.requeued()
            transport.sleep(next(delays), self._loop.stop_requested)
            if self._loop.stopping:
                break
            outcome = self._outcome(delivery, deliveries)
        return outcome, deliveries

    def _worth_a_decrypt(self, header: EnvelopeHeader) -> bool:
        """Whether the loop would ask KMS for this header's data key (admit())."""
        if self._policy and not self._policy.permits(header.context):
            return False
        policy = self._key_policy
        return not policy or (
            policy.lists(header.key_id)
            and policy.permits(header.key_id, header.context)
        )

    def _commit_position(self) -> None:
        if self.cursor is not None:
            self.cursor.commit()

    def _outcome(self, delivery: Delivery, deliveries: int) -> Outcome:
        return handle(
            delivery,
            self._opener,
            self._handler,
            policy=self._policy,
            key_policy=self._key_policy,
            deliveries=deliveries,
            max_deliveries=self._max_deliveries,
            guard=self._guard,
        )

    def _apply_settled(
        self,
        transport: BlockingTransport,
        delivery: Delivery,
        deliveries: int,
        outcome: Outcome,
    ) -> None:
        verdict = outcome.verdict
        if verdict is Verdict.ACK:
            transport.ack(delivery)
            self.stats.handled += 1
            self._metrics.handled()
            self._counter.settled(delivery)
        elif verdict is Verdict.DUPLICATE:  # replay protection: done before
            transport.ack(delivery)
            self.stats.duplicates_dropped += 1
            self._metrics.duplicate_dropped()
            self._counter.settled(delivery)
        elif verdict is Verdict.REQUEUE:
            self._counter.failed(delivery, deliveries)
            transport.requeue(delivery)
            self.stats.requeued += 1
            self._metrics.requeued()
        elif verdict is Verdict.RETRY:
            self._counter.retried(delivery)
            transport.requeue(delivery)
            self.stats.retried += 1
            self._metrics.requeued()
        elif verdict is Verdict.HALT:
            self._halt(transport, outcome)
        else:
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
            why = outcome.kms_code or outcome.detail
            logger.warning(
                "quarantining message %s from %r: %s%s",
                delivery.message_id,
                self._topology.queue,
                reason,
                f" ({why})" if why else "",
                extra=fields,
            )
            transport.quarantine(delivery, outcome)
            self._counter.settled(delivery)
            self.stats.quarantined[str(reason)] += 1
            self._metrics.quarantined(str(reason))
        if self.cursor is not None and verdict in _SETTLED:
            self.cursor.settled(delivery.headers)

    def _halt(self, transport: BlockingTransport, outcome: Outcome) -> NoReturn:
        """Stop: KMS refuses this consumer, whichever message it is given.

        What was handled is acknowledged; the message in hand and every other
        one stay in the queue (run() closes the channel, which requeues them).
        Quarantining would empty the live queue on one bad deploy.
        """
        transport.flush_acks()
        queue = self._topology.queue
        text = (
            f"KMS refuses this consumer: {outcome.kms_code} "
            f"(likely cause: {outcome.cause or 'its configuration'}); "
            f"stopped, every message left in {queue!r}"
        )
        logger.error(
            text,
            extra={
                "event": "consumer_halted",
                "queue": queue,
                "kms_code": outcome.kms_code,
                "cause": outcome.cause,
            },
        )
        self._metrics.halted(_COMPONENT, f"{outcome.kms_code}: {outcome.cause}")
        raise KmsCallerError(text, code=outcome.kms_code, cause=outcome.cause)

    def _hold(
        self, transport: BlockingTransport, delivery: Delivery, deliveries: int
    ) -> Outcome:
        """Retry ``delivery`` with backoff while KMS is unavailable.

        The message stays unacknowledged and the connection keeps servicing
        heartbeats while we wait; nothing later in the queue overtakes it.
        """
        transport.flush_acks()  # what was handled before the outage is done
        logger.warning(
            "KMS unavailable; holding message %s and retrying with backoff",
            delivery.message_id,
            extra={
                "event": "kms_unavailable",
                "queue": self._topology.queue,
                "message_id": delivery.message_id,
            },
        )
        outcome = RETRY_LATER
        for delay in self._kms_backoff.delays():
            self._metrics.alive(_COMPONENT)  # held, not stuck
            transport.sleep(delay, self._loop.stop_requested)
            if self._loop.stopping:
                break
            self.stats.kms_retries += 1
            self._metrics.kms_retry()
            outcome = self._outcome(delivery, deliveries)
            if outcome.verdict is not Verdict.RETRY_LATER:
                logger.info(
                    "KMS answers again; resuming",
                    extra={"event": "kms_recovered", "queue": self._topology.queue},
                )
                break
        return outcome
