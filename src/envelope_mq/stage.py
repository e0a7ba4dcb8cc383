"""EncryptedStage: consume, transform, re-seal under the stage's own key, hand on.

One pipeline hop across a trust boundary. Each input is opened under its
sender's key and context (the consumer's policies, quarantine and KMS
handling, unchanged), the handler returns zero or more outputs, each is sealed
under the stage's master key and context and published with confirms, and the
input is acknowledged only once every one of its outputs is confirmed:

- inputs are pipelined (the prefetch window), outputs are published without
  waiting on a confirm-mode channel of the consuming connection itself
  (consumer/outlet.py: one connection, one thread, no hand-off per message),
  and inputs are acknowledged in delivery order as their outputs' confirms
  arrive (``multiple`` acks in small batches);
- an output the broker nacks: its input is requeued (not counted against
  ``max_deliveries``: the broker's state, not the message's fault) and the
  stage backs off before going on;
- an output that matches no queue (basic.return): the routing is wrong for
  every message, so the stage stops (``run()`` raises ConfigError) and every
  unacknowledged input stays in its queue; quarantining would empty the live
  queue on one bad deploy;
- KMS refusing the stage's own key (GenerateDataKey): stops likewise
  (KmsCallerError / KmsRequestError); KMS unavailable: the input is held and
  retried with backoff, as the consumer does;
- what the consumer quarantines (undecryptable, malformed, denied, rejected,
  handler-error after ``max_deliveries``), the stage quarantines the same way.

Each output carries its input's message_id as its causation id, bound into
its tag (wire format v2: ``ReceivedMessage.causation_id`` downstream).

A crash anywhere loses nothing: an input is acknowledged after its outputs are
confirmed, never before. A lost connection loses nothing either: the inputs
in flight were not acknowledged, so the broker delivers them again, and their
outputs are published again (unconfirmed ones are not re-sent by the stage:
their input is). The price is duplicates: outputs confirmed before a crash
(or a lost connection, or a nacked sibling) are published again when the
input comes back. Outputs get message ids derived from the input's
(stage_output.py), so a downstream consumer with a ``dedup_window`` drops
them; ``StageStats.repeated_outputs`` (and the metric
``envelope_mq_stage_outputs_repeated_total``) counts the outputs published for
inputs delivered again, an upper bound on the duplicates.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn, Self

from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
from envelope_mq.consumer.deliveries import DeliveryCounter
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.keypolicy import KEY_IDS_ONLY, KeyPolicy, KeyResolver
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import (
    RETRY,
    RETRY_LATER,
    EnvelopeOpener,
    Outcome,
    Reason,
    Verdict,
    admit,
    after_handler,
)
from envelope_mq.consumer.outlet import NACKED, UNROUTABLE, check_exchange
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.runloop import RunLoop
from envelope_mq.consumer.streams import StreamCursor
from envelope_mq.consumer.transport import BlockingTransport
from envelope_mq.consumer.unwrapping import Closeable, unwrapping_from_settings
from envelope_mq.producer import frames
from envelope_mq.shared.amqp import (
    DEFAULT_EXCHANGE,
    ConnectionOptions,
    Topology,
    split_urls,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import (
    DataKeySource,
    MessageMeta,
    Opener,
    SealedMessage,
    Sealer,
)
from envelope_mq.shared.errors import (
    BrokerUnavailableError,
    ConfigError,
    KmsCallerError,
    KmsRequestError,
    KmsUnavailableError,
    SealingError,
)
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import KeyProvider
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks
from envelope_mq.shared.regions import writer_keys_from_settings
from envelope_mq.stage_output import StageOutput, output_message_id, outputs_of

__all__ = ["EncryptedStage", "StageHandler", "StageStats"]

logger = logging.getLogger(__name__)

#: ``handler(message)`` returns None, bytes, a StageOutput, or an iterable of them.
StageHandler = Callable[[ReceivedMessage], object]

_POLL_SECONDS = 0.25
# What a stream cannot requeue: the stage hands the input on again in place.
_IN_PLACE = frozenset({Verdict.REQUEUE, Verdict.RETRY})
_INTERLEAVE = 32  # inputs taken between two looks at the socket
_DRAIN_SECONDS = 30.0  # stop(): how long to wait for the outputs in flight
_COMPONENT = "stage"


@dataclass
class StageStats:
    """Counts since the stage was made; read them after (or during) ``run``."""

    handled: int = 0  # inputs acknowledged after all their outputs were confirmed
    outputs: int = 0  # outputs confirmed
    quarantined: Counter[str] = field(default_factory=Counter)
    requeued: int = 0  # the handler failed: counted against max_deliveries
    retried: int = 0  # the handler raised Retry: not counted
    outputs_nacked: int = 0  # inputs requeued because the broker nacked an output
    redelivered: int = 0  # inputs that came again (crash, lost connection, requeue)
    # Outputs published for redelivered inputs: each may repeat one already
    # confirmed; the duplicates a downstream consumer sees are at most this.
    repeated_outputs: int = 0
    kms_retries: int = 0
    reconnects: int = 0


def _frame(
    channel: int, exchange: str, routing_key: str, sealed: SealedMessage, body_max: int
) -> list[bytes]:
    """Every frame of one output, by the producer's marshaller (producer/frames.py)."""
    meta = sealed.meta
    return frames.frame_message(
        channel,
        frames.method_payload(exchange, routing_key),
        frames.header_payload(
            len(sealed.body),
            sealed.headers,
            message_id=meta.message_id,
            timestamp=meta.timestamp,
            content_type=meta.content_type,
            content_encoding=meta.content_encoding,
            type=meta.type,
        ),
        sealed.body,
        body_max,
    )


class _InFlight:
    """One input whose outputs are on their way; settled by the outlet's callbacks."""

    __slots__ = ("delivery", "error", "outputs", "remaining")

    def __init__(self, delivery: Delivery, outputs: int) -> None:
        self.delivery = delivery
        self.outputs = outputs
        self.remaining = outputs
        self.error: str | None = None  # the first output's failure

    def settled(self, error: str | None) -> None:
        self.remaining -= 1
        if error is not None and self.error is None:
            self.error = error


class EncryptedStage:
    """Consumes ``topology.queue``, hands each message to ``handler``, and
    publishes what it returns sealed under ``key_id`` and ``context`` (data
    keys from ``data_keys``) to ``output`` (declared) or ``exchange`` (which
    must exist) with ``routing_key``; see the module docstring for what
    happens when.

    The constructor does no I/O. :meth:`connect` (or ``with``) connects;
    :meth:`run` consumes until :meth:`stop` or ``count`` inputs were handled.
    Inputs and outputs share one connection, which belongs to one thread:
    connect, run and close in the same one.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        topology: Topology,
        opener: EnvelopeOpener,
        data_keys: DataKeySource,
        key_id: str,
        handler: StageHandler,
        *,
        context: Mapping[str, str] | None = None,
        output: Topology | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
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
        metrics: MetricsHooks | None = None,
        wire_version: int = 2,
        stream: StreamCursor | None = None,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if stream is not None and not topology.is_stream:
            raise ConfigError(
                f"a stream position needs a stream queue, not {topology.queue_type}"
            )
        if output is not None and exchange not in (None, output.exchange):
            raise ConfigError("exchange differs from the output topology's exchange")
        self._urls = split_urls(urls)
        self._topology = topology
        self._metrics = NULL_METRICS if metrics is None else metrics
        self._opener: EnvelopeOpener = self._metrics.time_opener(opener)
        if isinstance(data_keys, DataKeyCache):
            self._metrics.watch_cache(data_keys)
        self._sealer = self._metrics.time_sealer(
            Sealer(data_keys, key_id, context, wire_version=wire_version)
        )
        self._key_id = key_id
        # v1 has no room for the causation id; v2 binds it into the tag.
        self._causation = wire_version >= 2
        self._exchange = output.exchange if output else exchange or DEFAULT_EXCHANGE
        self._routing_key = routing_key or (output.binding_key if output else None)
        self._handler = handler
        self._max_deliveries = max_deliveries
        self._policy = policy or ContextPolicy()
        self._key_policy = key_policy if key_policy else None
        self._key_resolver = key_resolver or KEY_IDS_ONLY
        self._kms_backoff = kms_backoff or Backoff(initial=0.2, cap=10.0)
        self._transport = BlockingTransport(
            self._urls,
            topology,
            prefetch=prefetch,
            ack_batch=max(1, min(ack_batch, prefetch // 4)),
            options=connection_options,
            outlet=output.declare if output else check_exchange(self._exchange),
            framer=_frame,
            cursor=stream,
        )
        #: The input stream's position (None unless the input is a stream).
        self.cursor = self._transport.cursor
        self._counter = DeliveryCounter()
        self._owned_kms: list[Closeable] = []
        self._inflight: deque[_InFlight] = deque()
        self._limit: int | None = None
        self.stats = StageStats()
        # Connect, reconnect with backoff, stop: the consumer's (consumer/runloop.py).
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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        topology: Topology,
        handler: StageHandler,
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
        kms_backoff: Backoff | None = None,
        reconnect_backoff: Backoff | None = None,
        connection_options: ConnectionOptions | None = None,
        metrics: MetricsHooks | None = None,
        max_decrypt_rate: float = DEFAULT_DECRYPT_RATE,
        stream: StreamCursor | None = None,
    ) -> EncryptedStage:
        """Wire one KMS client for both sides from ``settings``; no I/O.

        ``topology`` is the input; ``output`` (declared by the stage) or
        ``exchange`` (which must exist) and ``routing_key`` where outputs go
        (a StageOutput may name its own routing key). Outputs are sealed
        under ``key_id`` (default ``settings.kms_key_id``) and ``context``:
        the stage's credentials need Decrypt on its inputs' keys and
        GenerateDataKey on its own. ``provider`` replaces the KMS client made
        from ``settings`` (the caller keeps closing it).
        """
        master = key_id or settings.kms_key_id
        if not master:
            raise ConfigError(
                "the stage's KMS master key id is required (KMS_KEY_ID or --key-id)"
            )
        hooks = NULL_METRICS if metrics is None else metrics
        # Opening as the consumer does (one KMS, or one per region; Decrypt
        # calls service the consuming connection while they wait) ...
        wiring = unwrapping_from_settings(
            settings,
            hooks,
            provider=provider,
            max_decrypt_rate=max_decrypt_rate,
            keep_alive=True,
        )
        owned: list[Closeable] = [] if wiring.owned is None else [wiring.owned]
        # ... and sealing as the publisher does (KMS_WRAP_ALSO: a copy of each
        # data key per region).
        writer: KeyProvider
        if provider is None:
            writer, writer_owned = writer_keys_from_settings(settings, metrics)
            owned.append(writer_owned)
        else:
            writer = provider
        if metrics is not None:
            writer = metrics.instrument_provider(writer)
        data_keys = DataKeyCache(
            writer,
            max_age=settings.data_key_max_age,
            max_messages=settings.data_key_max_messages,
        )
        try:
            stage = cls(
                settings.rabbitmq_urls,
                topology,
                Opener(wiring.unwrapper),
                data_keys,
                master,
                handler,
                context=context,
                output=output,
                exchange=exchange,
                routing_key=routing_key,
                prefetch=prefetch,
                max_deliveries=max_deliveries,
                policy=policy,
                key_policy=key_policy,
                key_resolver=wiring.resolver,
                kms_backoff=kms_backoff,
                reconnect_backoff=reconnect_backoff,
                connection_options=connection_options,
                keep_alive=wiring.keep_alive,
                metrics=metrics,
                wire_version=settings.wire_version,
                stream=stream,
            )
        except BaseException:
            for client in owned:
                client.close()
            raise
        stage._owned_kms = owned  # their sockets are released by close()
        return stage

    @property
    def topology(self) -> Topology:
        """The input this stage declares and consumes."""
        return self._topology

    @property
    def key_id(self) -> str:
        """The master key the outputs are sealed under (as configured)."""
        return self._key_id

    # ---- lifecycle -------------------------------------------------------------

    def connect(self) -> Self:
        """Connect, declare the input and the output, start consuming.

        Returns the stage; does nothing when already connected. Raises what
        ``EncryptedConsumer.connect`` raises (BrokerError, 404, when the
        output exchange does not exist).
        """
        if self._loop.connected:
            return self
        resolver = self._key_resolver
        if self._key_policy and not self._key_policy.resolved and resolver:
            self._key_policy = self._key_policy.resolve(resolver)
        self._loop.open()
        return self

    def close(self) -> None:
        """Requeue every input not handed on, disconnect; never raises.

        An input whose outputs were published but not all confirmed comes back
        and is handed on again (counted as repeated outputs then).
        """
        self._inflight.clear()
        was_connected = self._loop.close()
        self._commit_position()
        for client in self._owned_kms:
            client.close()
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
        """Ask :meth:`run` to return once the outputs in flight are confirmed.

        Safe from a signal handler, another thread or the handler: sets a flag.
        """
        self._loop.stop()

    # ---- the loop --------------------------------------------------------------

    def run(self, count: int | None = None) -> StageStats:
        """Hand on inputs until :meth:`stop`, or until ``count`` were handled.

        Connects first when not connected, and then closes when it returns.

        Raises:
            ConfigError: an output matched no queue; nothing more is taken.
            KmsCallerError, KmsRequestError: KMS refuses the stage (its
                credentials, or its own master key); inputs stay queued.
            BrokerUnavailableError: the first connection could not be made.
            BrokerError: a topology could not be declared, or the output
                exchange does not exist.
        """
        self._limit = None if count is None else self.stats.handled + count
        transport = self._transport
        self._loop.run(
            self.connect,
            lambda: self._consume(transport),
            self.close,
            reached_limit=self._reached_limit,
            # Outputs on their way: their confirms settle them, even when stopping.
            busy=lambda: bool(self._inflight),
            # Their acks can no longer be sent: they come back, and their outputs
            # (confirmed or not) are published again (repeated_outputs).
            on_lost=self._inflight.clear,
        )
        return self.stats

    def _finished(self) -> bool:
        if self._inflight:
            return False
        return self._loop.stopping or self._reached_limit()

    def _reached_limit(self) -> bool:
        return self._limit is not None and self.stats.handled >= self._limit

    def _taking(self) -> bool:
        """Whether to take more inputs (not when stopping or at ``count``)."""
        if self._loop.stopping:
            return False
        if self._limit is None:
            return True
        return self.stats.handled + len(self._inflight) < self._limit

    def _consume(self, transport: BlockingTransport) -> None:
        pending = transport.pending
        inflight = self._inflight
        taken = 0
        with transport.errors():
            while True:
                self._settle_ready(transport)
                if pending and self._taking():
                    self._take(transport, pending.popleft())
                    taken += 1
                    if taken % _INTERLEAVE == 0:
                        # Write the outputs, read their confirms and send the
                        # acks they allow now, not after the whole window: the
                        # broker keeps delivering while we work.
                        transport.pump(0)
                    continue
                if self._finished():
                    break
                # Waiting: for deliveries, or for the confirms of the outputs
                # in flight (the outlet's callbacks run inside pump()).
                self._metrics.alive(_COMPONENT)
                transport.flush_acks()
                if not inflight:
                    self._commit_position()
                if not (inflight and not inflight[0].remaining):
                    transport.pump(_POLL_SECONDS)
                if not transport.consuming:
                    raise BrokerUnavailableError("the broker cancelled our consumer")
            transport.flush_acks()

    def _settle_ready(self, transport: BlockingTransport) -> None:
        """Acknowledge, in delivery order, every input whose outputs are settled."""
        inflight = self._inflight
        while inflight and not inflight[0].remaining:
            entry = inflight.popleft()
            if entry.error is None:
                if self.cursor is not None:
                    # Before the ack (which may fail on a lost connection):
                    # on a stream an ack only returns credit.
                    self.cursor.settled(entry.delivery.headers)
                transport.ack(entry.delivery)
                self.stats.handled += 1
                self.stats.outputs += entry.outputs
                if entry.outputs:
                    self._metrics.confirmed(entry.outputs)
                self._metrics.handled()
                self._counter.settled(entry.delivery)
            else:
                self._output_failed(transport, entry, entry.error)

    def _output_failed(
        self, transport: BlockingTransport, entry: _InFlight, error: str
    ) -> None:
        delivery = entry.delivery
        if error == NACKED and self.cursor is not None:
            # A stream cannot take the input back: hand it on again in place,
            # ahead of every later input (whose outputs may be confirmed, but
            # which must not move the position past this one).
            self.stats.outputs_nacked += 1
            self._metrics.requeued()
            self._in_place(transport, delivery, 1, RETRY)
            return
        if error == NACKED:
            # The broker refused an output (overflow, an internal error): the
            # input goes back and is handed on again later, after a pause.
            transport.requeue(delivery)
            self.stats.outputs_nacked += 1
            self._metrics.requeued()
            logger.warning(
                "the broker nacked an output of message %s; input requeued",
                delivery.message_id,
                extra={"event": "stage_output_nacked", "queue": self._topology.queue},
            )
            transport.sleep(next(self._kms_backoff.delays()), self._loop.stop_requested)
            return
        if error == UNROUTABLE:
            raise ConfigError(
                f"stage stopped: an output of message {delivery.message_id} matched "
                f"no queue (exchange {self._exchange!r}); every input not handed "
                f"on stays in {self._topology.queue!r}"
            )
        # CLOSED: the channel is gone; the loop reconnects, the inputs come back.
        raise BrokerUnavailableError(f"stage output channel lost ({error})")

    def _take(self, transport: BlockingTransport, delivery: Delivery) -> None:
        self._metrics.consumed()
        deliveries = 1
        if delivery.redelivered:
            deliveries = self._counter.deliveries(delivery)
            self.stats.redelivered += 1
        outcome = self._attempt(delivery, deliveries)
        if outcome is not None:
            self._decided(transport, delivery, deliveries, outcome)

    def _attempt(
        self, delivery: Delivery, deliveries: int, *, front: bool = False
    ) -> Outcome | None:
        """Open, handle and publish; None when the outputs are on their way.

        ``front``: the input goes ahead of those in flight (a stream's retry).
        """
        admitted = admit(
            delivery, self._opener, policy=self._policy, key_policy=self._key_policy
        )
        if isinstance(admitted, Outcome):
            return admitted
        try:
            outputs = outputs_of(self._handler(admitted))
        except Exception as exc:  # the one boundary around user code
            return after_handler(
                admitted,
                exc,
                deliveries=deliveries,
                max_deliveries=self._max_deliveries,
            )
        try:
            # Every output sealed before any is published: a failure here
            # publishes nothing.
            sealed = self._seal(admitted, outputs)
        except SealingError as exc:  # an output the handler made unusable
            return after_handler(
                admitted,
                exc,
                deliveries=deliveries,
                max_deliveries=self._max_deliveries,
            )
        except KmsUnavailableError:
            return RETRY_LATER  # no data key for now: hold the input and retry
        except KmsRequestError as exc:  # the stage's own key: every input alike
            return Outcome(
                Verdict.HALT,
                kms_code=exc.code,
                cause=exc.cause
                if isinstance(exc, KmsCallerError)
                else f"KMS refuses data keys under the stage's key {self._key_id}",
            )
        entry = _InFlight(delivery, len(sealed))
        outlet = self._transport.outlet
        if sealed and outlet is None:
            raise BrokerUnavailableError("not connected to RabbitMQ")
        for routing_key, message in sealed:
            outlet.publish(self._exchange, routing_key, message, entry.settled)  # type: ignore[union-attr]
            self._metrics.published()
        if delivery.redelivered and sealed:
            self.stats.repeated_outputs += len(sealed)
            self._metrics.stage_repeated_outputs(len(sealed))
        if front:
            self._inflight.appendleft(entry)
        else:
            self._inflight.append(entry)
        return None

    def _seal(
        self, message: ReceivedMessage, outputs: list[StageOutput]
    ) -> list[tuple[str, SealedMessage]]:
        sealed = []
        now = int(time.time())
        for index, out in enumerate(outputs):
            routing_key = out.routing_key or self._routing_key
            if routing_key is None:
                raise ConfigError(
                    "a stage output needs a routing key: give the stage an output "
                    "topology or a routing_key, or set StageOutput.routing_key"
                )
            meta = MessageMeta(
                message_id=out.message_id
                or output_message_id(self._key_id, message.message_id, index),
                timestamp=now,
                content_type=out.content_type,
                content_encoding=out.content_encoding,
                type=out.type,
                causation_id=message.message_id if self._causation else None,
            )
            sealed.append((routing_key, self._sealer.seal(out.body, meta)))
        return sealed

    def _decided(
        self,
        transport: BlockingTransport,
        delivery: Delivery,
        deliveries: int,
        outcome: Outcome,
    ) -> None:
        """Apply an outcome other than "outputs on their way", in order.

        Acks go out as ``multiple`` acks, so everything taken before must be
        settled first; these outcomes are rare (quarantine, requeue, KMS).
        """
        self._drain(transport)
        if outcome.verdict is Verdict.RETRY_LATER:
            outcome = self._hold(transport, delivery, deliveries)
            if outcome.verdict is Verdict.RETRY_LATER:
                return  # stopping: the input stays unacknowledged
        verdict = outcome.verdict
        if verdict is Verdict.ACK:  # handed on after a hold
            self._drain(transport)
        elif verdict in _IN_PLACE and self.cursor is not None:
            self._in_place(transport, delivery, deliveries, outcome)
        elif verdict in _IN_PLACE:
            if verdict is Verdict.REQUEUE:
                self._counter.failed(delivery, deliveries)
                self.stats.requeued += 1
            else:
                self._counter.retried(delivery)
                self.stats.retried += 1
            transport.requeue(delivery)
            self._metrics.requeued()
        elif verdict is Verdict.HALT:
            self._halt(transport, outcome)
        elif verdict is Verdict.DUPLICATE:  # no replay guard here; kept total
            transport.ack(delivery)
        else:
            reason = outcome.reason or Reason.MALFORMED
            logger.warning(
                "quarantining message %s from %r: %s",
                delivery.message_id,
                self._topology.queue,
                reason,
                extra={
                    "event": "message_quarantined",
                    "queue": self._topology.queue,
                    "message_id": delivery.message_id,
                    "reason": str(reason),
                },
            )
            if self.cursor is not None:
                self.cursor.settled(delivery.headers)
            transport.quarantine(delivery, outcome)
            self._counter.settled(delivery)
            self.stats.quarantined[str(reason)] += 1
            self._metrics.quarantined(str(reason))

    def _in_place(
        self,
        transport: BlockingTransport,
        delivery: Delivery,
        deliveries: int,
        outcome: Outcome,
    ) -> None:
        """A stream's requeue: try ``delivery`` again here, with backoff.

        A stream cannot take a message back and skipping it would lose it, so
        it is handled again ahead of every later input, each REQUEUE counted
        against ``max_deliveries`` (then quarantined as handler-error), each
        RETRY (and each nacked output) not. When stopping, the position stays
        before it.
        """
        delays = self._kms_backoff.delays()
        while outcome.verdict in _IN_PLACE or outcome.verdict is Verdict.RETRY_LATER:
            if outcome.verdict is Verdict.REQUEUE:
                self.stats.requeued += 1
                deliveries += 1
            elif outcome.verdict is Verdict.RETRY:
                self.stats.retried += 1
            else:
                self.stats.kms_retries += 1
            transport.sleep(next(delays), self._loop.stop_requested)
            if self._loop.stopping:
                self._inflight.clear()  # nothing later may settle past it
                return
            attempt = self._attempt(delivery, deliveries, front=True)
            if attempt is None:
                return  # its outputs are on their way, ahead of the rest
            outcome = attempt
        if outcome.verdict is Verdict.HALT:
            self._halt(transport, outcome)
        # Settled here (quarantined): later inputs may follow it.
        self._decided_now(transport, delivery, outcome)

    def _decided_now(
        self, transport: BlockingTransport, delivery: Delivery, outcome: Outcome
    ) -> None:
        """Quarantine ``delivery`` without waiting for the inputs in flight."""
        reason = outcome.reason or Reason.MALFORMED
        if self.cursor is not None:
            self.cursor.settled(delivery.headers)
        transport.quarantine(delivery, outcome)
        self._counter.settled(delivery)
        self.stats.quarantined[str(reason)] += 1
        self._metrics.quarantined(str(reason))

    def _commit_position(self) -> None:
        if self.cursor is not None:
            self.cursor.commit()

    def _drain(self, transport: BlockingTransport) -> None:
        """Wait until every input in flight is settled (acked or requeued)."""
        inflight = self._inflight
        while True:
            self._settle_ready(transport)
            if not inflight:
                return
            if inflight[0].remaining:
                transport.pump(_POLL_SECONDS)

    def _hold(
        self, transport: BlockingTransport, delivery: Delivery, deliveries: int
    ) -> Outcome:
        """Retry ``delivery`` with backoff while KMS is unavailable (in order)."""
        transport.flush_acks()
        logger.warning(
            "KMS unavailable; holding message %s and retrying with backoff",
            delivery.message_id,
            extra={"event": "kms_unavailable", "queue": self._topology.queue},
        )
        outcome: Outcome | None = RETRY_LATER
        for delay in self._kms_backoff.delays():
            self._metrics.alive(_COMPONENT)
            transport.sleep(delay, self._loop.stop_requested)
            if self._loop.stopping:
                break
            self.stats.kms_retries += 1
            self._metrics.kms_retry()
            outcome = self._attempt(delivery, deliveries)
            if outcome is None:
                return Outcome(Verdict.ACK)  # outputs on their way, in flight
            if outcome.verdict is not Verdict.RETRY_LATER:
                return outcome
        return RETRY_LATER

    def _halt(self, transport: BlockingTransport, outcome: Outcome) -> NoReturn:
        transport.flush_acks()
        queue = self._topology.queue
        text = (
            f"KMS refuses this stage: {outcome.kms_code} "
            f"(likely cause: {outcome.cause or 'its configuration'}); "
            f"stopped, every input left in {queue!r}"
        )
        logger.error(text, extra={"event": "stage_halted", "queue": queue})
        self._metrics.halted(_COMPONENT, f"{outcome.kms_code}: {outcome.cause}")
        raise KmsCallerError(text, code=outcome.kms_code, cause=outcome.cause)
