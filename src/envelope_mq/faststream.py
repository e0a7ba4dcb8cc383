"""EnvelopeMiddleware: KMS envelope encryption for FastStream's RabbitBroker.

::

    envelope = EnvelopeMiddleware.from_settings(settings)
    broker = guard_connection(RabbitBroker(url, middlewares=[envelope]))

Every publish path goes through ``publish_scope`` (``broker.publish``,
``@broker.publisher``, a handler's return value, ``broker.request`` and its
reply): the body is encoded as FastStream would (``faststream.message.
encode_message``), sealed, and sent with the x-emq-* headers and the exact
message_id, timestamp, content_type, content_encoding and type bound into the
tag. Every consumed message goes through ``consume_scope`` before FastStream's
decoder runs, so handlers receive plaintext and their typed models as usual.

A message that cannot be opened never reaches the handler: it is copied to
``<queue>.quarantine`` with the same x-emq-quarantine-* headers as the sync
consumer gives (reason malformed, undecryptable, context-denied, kms-rejected,
key-mismatch, expired), the copy confirmed, and only then acknowledged. When
KMS is unavailable the message is held and retried with backoff, then
requeued. The allowed-context policy and replay guard are the consumer's own
(``consumer.outcome.admit``). KMS calls never block the event loop
(``aio.offload``).

A subscriber on a queue whose name ends in ``.quarantine`` receives messages
as they are, sealed: that is the place to inspect or replay them.

:func:`guard_connection` makes the broker's connection read content headers
through :mod:`envelope_mq.aio.frames`: one that aiormq's decoder (pamqp)
cannot read (a timestamp past year 9999, a field name that is not UTF-8,
tables nested past the recursion limit) would otherwise kill the connection
on every delivery attempt, stalling every subscriber of the broker; guarded,
it reaches the middleware as a ``malformed`` delivery and goes to quarantine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage
from faststream.message import StreamMessage, encode_message
from faststream.rabbit import RabbitBroker
from faststream.rabbit.response import RabbitPublishCommand
from faststream.rabbit.testing import PatchedMessage
from faststream.response.publish_type import PublishType

from envelope_mq.aio.broker import delivery_of
from envelope_mq.aio.frames import SafeHeaderRobustConnection, pamqp_encodable
from envelope_mq.aio.offload import (
    DEFAULT_KMS_THREADS,
    AsyncSealer,
    CachedDataKeySource,
    CachedKeyUnwrapper,
    KmsOffload,
    NeedsKms,
    loop_openers,
)
from envelope_mq.aio.quarantine import (
    QuarantinePublisher,
    incoming_properties,
    quarantine_copy,
)
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
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
)
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.unwrapping import Closeable, unwrapping_from_settings
from envelope_mq.producer.publisher import new_message_id
from envelope_mq.shared import wire
from envelope_mq.shared.amqp import QUARANTINE_SUFFIX
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta
from envelope_mq.shared.errors import ConfigError, DecryptionError, SealingError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import KeyProvider, kms_from_settings
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks

__all__ = ["EnvelopeMiddleware", "guard_connection"]

_log = logging.getLogger(__name__)

# After a failed quarantine the message is requeued; this pause keeps a broker
# that refuses the copy from becoming a hot loop.
_QUARANTINE_RETRY_PAUSE = 1.0
# A refused consumer (wrong credentials, clock skew) hands each message back
# after this pause instead of quarantining it: nothing lost, no hot loop.
_HALT_PAUSE = 5.0
# What FastStream's decoder leaves as bytes.
_OPAQUE = "application/octet-stream"


# Brokers whose connection goes through aio/frames.py (guard_connection).
_GUARDED: weakref.WeakSet[RabbitBroker] = weakref.WeakSet()


def guard_connection(broker: RabbitBroker) -> RabbitBroker:
    """``broker``, its connection reading content headers it cannot decode safely.

    Call it before the broker connects (``RabbitBroker(...)`` then this; for
    FastAPI's ``RabbitRouter``, on ``router.broker``). Every connection the
    broker opens, reconnections too, then reads through
    :class:`~envelope_mq.aio.frames.SafeHeaderTransportFactory`: a content
    header pamqp cannot decode is rewritten into one it can, with the defects
    in ``x-emq-quarantine-defects``, and EnvelopeMiddleware quarantines the
    message as ``malformed`` instead of the connection dying on it.

    Raises ConfigError when the broker is already connected, or when this
    FastStream keeps its connection arguments elsewhere (FastStream 0.7
    passes ``_connection_kwargs`` to ``aio_pika.connect_robust``; no public
    argument takes a connection class).
    """
    kwargs = getattr(broker, "_connection_kwargs", None)
    if not isinstance(kwargs, dict):
        raise ConfigError(
            "guard_connection: this FastStream version does not take a "
            "connection class (FastStream 0.7 is supported)"
        )
    if getattr(broker, "_connection", None) is not None:
        raise ConfigError("guard_connection: call it before the broker connects")
    kwargs["connection_class"] = SafeHeaderRobustConnection
    _GUARDED.add(broker)
    return broker


class EnvelopeMiddleware:
    """Seals what a RabbitBroker publishes and opens what it consumes.

    Pass the instance in ``RabbitBroker(middlewares=[...])`` (or to one
    subscriber or publisher). ``key_id`` with ``data_keys`` lets it seal;
    ``unwrap`` lets it open (wire formats 1 and 2). Without a key to seal
    with, publishing raises ConfigError: nothing is ever published unsealed.
    ``wire_version`` is the format it seals in (2; 1 for v1-only readers).
    """

    def __init__(
        self,
        key_id: str | None = None,
        *,
        data_keys: CachedDataKeySource | None = None,
        unwrap: CachedKeyUnwrapper | None = None,
        context: Mapping[str, str] | None = None,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        key_resolver: KeyResolver | None = None,
        max_age: float | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        dedup_window: int = 0,
        kms_backoff: Backoff | None = None,
        kms_hold: float = 30.0,
        metrics: MetricsHooks | None = None,
        kms_threads: int = DEFAULT_KMS_THREADS,
        serializer: Any = None,
        wire_version: int = 2,
    ) -> None:
        if (key_id is None) != (data_keys is None):
            raise ConfigError("key_id and data_keys go together")
        if key_policy and not key_policy.resolved and key_resolver is None:
            raise ConfigError(
                "an allowed-key policy needs a key_resolver (DescribeKey) "
                "or resolving first (KeyPolicy.resolve)"
            )
        self._metrics = NULL_METRICS if metrics is None else metrics
        self._offload = KmsOffload(kms_threads)
        self._sealer = (
            None
            if key_id is None or data_keys is None
            else AsyncSealer(
                data_keys,
                key_id,
                context,
                self._offload,
                self._metrics,
                wire_version=wire_version,
            )
        )
        self._openers: tuple[EnvelopeOpener, EnvelopeOpener] | None = None
        if unwrap is not None:
            fast, slow = loop_openers(unwrap)
            self._openers = (
                self._metrics.time_opener(fast),
                self._metrics.time_opener(slow),
            )
        self._policy = policy or ContextPolicy()
        self._key_policy = key_policy if key_policy else None
        self._key_resolver = key_resolver
        self._resolving = asyncio.Lock()
        guard = ReplayGuard(
            max_age=max_age, dedup_window=dedup_window, max_skew=max_skew
        )
        self._guard = guard if guard.enabled else None
        self._kms_backoff = kms_backoff or Backoff(initial=0.2, cap=5.0)
        self._kms_hold = kms_hold
        self._owned: list[Closeable] = []
        self._quarantine_copies = QuarantinePublisher()
        self._serializer = serializer or _default_serializer()
        self._unguarded_warned = False

    @classmethod
    def from_provider(
        cls,
        provider: KeyProvider,
        key_id: str | None = None,
        *,
        context: Mapping[str, str] | None = None,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        max_age: float | None = None,
        dedup_window: int = 0,
        metrics: MetricsHooks | None = None,
    ) -> EnvelopeMiddleware:
        """Seal (when ``key_id`` is given) and open with one key provider.

        With ``InMemoryKeyProvider`` this is the middleware for users' unit
        tests under FastStream's ``TestRabbitBroker``.
        """
        hooks = NULL_METRICS if metrics is None else metrics
        provider = hooks.instrument_provider(provider)
        return cls(
            key_id,
            data_keys=None if key_id is None else DataKeyCache(provider),
            unwrap=UnwrapCache(provider),
            context=context,
            policy=policy,
            key_policy=key_policy,
            key_resolver=provider if isinstance(provider, KeyResolver) else None,
            max_age=max_age,
            dedup_window=dedup_window,
            metrics=metrics,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        key_id: str | None = None,
        context: Mapping[str, str] | None = None,
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        provider: KeyProvider | None = None,
        max_age: float | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        dedup_window: int = 0,
        metrics: MetricsHooks | None = None,
        max_decrypt_rate: float = DEFAULT_DECRYPT_RATE,
    ) -> EnvelopeMiddleware:
        """The KMS client, key caches and master key (KMS_KEY_ID) of ``settings``.

        Seals only when a master key id is known; opens always (the
        credentials need the Decrypt permission for that, GenerateDataKey to
        seal). An allowed-key ``key_policy`` is resolved by DescribeKey on
        the first message. ``max_decrypt_rate`` bounds the Decrypt calls per
        second of data keys not cached (consumer/budget.py). Settings that
        name more than one KMS region open with one client and cache per
        region, as the consumers' ``from_settings`` (consumer/unwrapping.py);
        sealing uses the settings' own region, as the publishers.
        """
        hooks = NULL_METRICS if metrics is None else metrics
        master = key_id or settings.kms_key_id
        # Opening as the consumers do: one KMS, or one per region
        # (KMS_REGIONS / KMS_REGION_ENDPOINTS), under the Decrypt budget.
        wiring = unwrapping_from_settings(
            settings,
            hooks,
            provider=provider,
            max_decrypt_rate=max_decrypt_rate,
            keep_alive=False,
        )
        owned: list[Closeable] = [] if wiring.owned is None else [wiring.owned]
        try:
            data_keys = None
            if master is not None:
                sealing = provider
                if sealing is None:  # the settings' own region, as the publishers
                    sealing = kms_from_settings(settings)
                    owned.append(sealing)
                data_keys = DataKeyCache(
                    hooks.instrument_provider(sealing),
                    max_age=settings.data_key_max_age,
                    max_messages=settings.data_key_max_messages,
                )
            middleware = cls(
                master,
                data_keys=data_keys,
                unwrap=wiring.unwrapper,
                context=context,
                policy=policy,
                key_policy=key_policy,
                key_resolver=wiring.resolver,
                max_age=max_age,
                max_skew=max_skew,
                dedup_window=dedup_window,
                metrics=metrics,
                wire_version=settings.wire_version,
            )
        except BaseException:
            for client in owned:
                client.close()
            raise
        middleware._owned.extend(owned)
        return middleware

    def close(self) -> None:
        """Release the KMS threads and the KMS client made by from_settings."""
        self._offload.close()
        for kms in self._owned:
            kms.close()

    def __call__(self, msg: Any, /, *, context: Any) -> _EnvelopeScope:
        """FastStream makes one middleware per message and per publish."""
        return _EnvelopeScope(msg, context=context, envelope=self)

    def __repr__(self) -> str:
        return f"EnvelopeMiddleware(sealer={self._sealer!r})"

    # ---- publishing -------------------------------------------------------

    async def seal_command(self, cmd: Any) -> Any:
        """Seal one FastStream publish command in place; return it.

        The body is encoded as FastStream's producer encodes it by default
        (``serializer``: FastStream's pydantic serializer unless given).
        """
        if self._sealer is None:
            raise ConfigError(
                "EnvelopeMiddleware has no master key to seal with "
                "(KMS_KEY_ID or key_id=): it never publishes unsealed"
            )
        if not isinstance(cmd.body, str | bytes) and hasattr(cmd.body, "body"):
            # An aio_pika.Message would go out as built, past every option.
            raise SealingError("publish the body itself, not a built AMQP message")
        options: dict[str, Any] = cmd.message_options
        body, content_type = encode_message(cmd.body, self._serializer)
        meta = MessageMeta(
            message_id=options.get("message_id") or new_message_id(),
            timestamp=int(time.time()),
            content_type=options.get("content_type") or content_type,
            content_encoding=options.get("content_encoding"),
            type=options.get("message_type"),
        )
        sealed = await self._sealer.seal(body, meta)
        cmd.body = sealed.body
        # Exactly what was bound into the tag goes on the wire.
        options["message_id"] = meta.message_id
        options["timestamp"] = meta.timestamp
        options["content_type"] = meta.content_type
        options["content_encoding"] = meta.content_encoding
        options["message_type"] = meta.type
        # pamqp writes a byte array ("x", v2's x-emq) only from a bytearray
        cmd.headers = {**(cmd.headers or {}), **pamqp_encodable(sealed.headers)}
        self._metrics.published()
        return cmd

    # ---- consuming --------------------------------------------------------

    async def open_message(
        self,
        call_next: Callable[[StreamMessage[Any]], Awaitable[Any]],
        msg: StreamMessage[Any],
        context: Any,
    ) -> Any:
        """Open ``msg`` and call the handler with its plaintext, or settle it."""
        queue = _queue_of(context)
        if queue is not None and queue.endswith(QUARANTINE_SUFFIX):
            # A quarantine reader gets the sealed bytes as stored; the content
            # type is the plaintext's (on msg.raw_message), not theirs.
            msg.content_type = _OPAQUE
            msg.clear_cache()
            return await call_next(msg)
        if self._openers is None:
            raise ConfigError("EnvelopeMiddleware has no key provider to open with")
        if (
            queue is None
            and isinstance(msg.raw_message, PatchedMessage)
            and not wire.our_headers(msg.headers or {})
        ):
            # TestRabbitBroker hands a handler's reply to broker.request()
            # straight back, past every publish middleware: unsealed. Only the
            # test client makes PatchedMessage; a real reply is always sealed.
            return await call_next(msg)
        self._metrics.consumed()
        if not self._unguarded_warned:
            self._warn_unguarded(msg, context)
        await self._resolve_key_policy()
        delivery = delivery_of(msg.raw_message, None)
        decision = await self._admit(delivery)
        if decision is RETRY_LATER:
            decision = await self._hold(delivery)
        if isinstance(decision, ReceivedMessage):
            msg.body = decision.body
            msg.clear_cache()  # decode the plaintext, not what was cached before
            result = await call_next(msg)
            if self._guard is not None:
                self._guard.handled(
                    decision.key_id, decision.context, decision.message_id
                )
            self._metrics.handled()
            return result
        verdict = decision.verdict
        if verdict is Verdict.DUPLICATE:
            self._metrics.duplicate_dropped()
            await msg.ack()
            raise AckMessage
        if verdict is Verdict.RETRY_LATER:
            self._metrics.requeued()
            raise NackMessage(requeue=True)
        if verdict is Verdict.HALT:
            # KMS refuses this service, not the message: never quarantine it.
            # FastStream gives a middleware no way to stop its subscriber, so
            # the message goes back, after a pause that keeps this from
            # becoming a hot loop; readiness says why until a restart.
            _log.error(
                "KMS refuses this consumer: %s (likely cause: %s); message %s "
                "left in the queue",
                decision.kms_code,
                decision.cause or "its configuration",
                delivery.message_id,
                extra={"event": "consumer_halted", "kms_code": decision.kms_code},
            )
            self._metrics.halted("consumer", f"{decision.kms_code}: {decision.cause}")
            await asyncio.sleep(_HALT_PAUSE)
            raise NackMessage(requeue=True)
        if queue is None:
            # A reply to broker.request(): no queue of ours to quarantine to.
            raise DecryptionError()
        await self._quarantine(msg, delivery, decision, queue, context)
        raise AckMessage

    def _warn_unguarded(self, msg: StreamMessage[Any], context: Any) -> None:
        broker = context.get("broker")
        if isinstance(msg.raw_message, PatchedMessage) or broker in _GUARDED:
            return  # TestRabbitBroker has no connection to guard
        self._unguarded_warned = True
        _log.warning(
            "the broker's connection decodes content headers with pamqp: a "
            "message pamqp cannot decode stalls its subscribers instead of "
            "going to quarantine; build the broker with guard_connection()",
            extra={"event": "connection_unguarded"},
        )

    async def _resolve_key_policy(self) -> None:
        """DescribeKey the allowed keys once, in a KMS thread, on first use."""
        policy, resolver = self._key_policy, self._key_resolver
        if not policy or policy.resolved or resolver is None:
            return
        async with self._resolving:
            policy = self._key_policy
            if policy and not policy.resolved:
                self._key_policy = await self._offload.run(
                    functools.partial(policy.resolve, resolver)
                )
                _log.info(
                    "allowed master keys: %s",
                    ", ".join(self._key_policy.key_ids()),
                    extra={"event": "key_policy"},
                )

    async def _admit(self, delivery: Delivery) -> ReceivedMessage | Outcome:
        assert self._openers is not None  # noqa: S101 - checked by the caller
        fast, slow = self._openers
        try:
            return admit(
                delivery,
                fast,
                policy=self._policy,
                key_policy=self._key_policy,
                guard=self._guard,
            )
        except NeedsKms:
            pass
        return await self._offload.run(
            functools.partial(
                admit,
                delivery,
                slow,
                policy=self._policy,
                key_policy=self._key_policy,
                guard=self._guard,
            )
        )

    async def _hold(self, delivery: Delivery) -> ReceivedMessage | Outcome:
        """KMS unavailable: hold the message and retry, up to ``kms_hold`` seconds."""
        _log.warning(
            "KMS unavailable; holding message %s and retrying with backoff",
            delivery.message_id,
            extra={"event": "kms_unavailable", "message_id": delivery.message_id},
        )
        deadline = time.monotonic() + self._kms_hold
        decision: ReceivedMessage | Outcome = RETRY_LATER
        for delay in self._kms_backoff.delays():
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            self._metrics.kms_retry()
            decision = await self._admit(delivery)
            if decision is not RETRY_LATER:
                break
        return decision

    async def _quarantine(
        self,
        msg: StreamMessage[Any],
        delivery: Delivery,
        outcome: Outcome,
        queue: str,
        context: Any,
    ) -> None:
        raw = msg.raw_message
        reason = outcome.reason or Reason.MALFORMED
        _log.warning(
            "quarantining message %s from %r: %s%s",
            delivery.message_id,
            queue,
            reason,
            f" ({outcome.kms_code})" if outcome.kms_code else "",
            extra={
                "event": "message_quarantined",
                "queue": queue,
                "message_id": delivery.message_id,
                "reason": str(reason),
            },
        )
        copy = quarantine_copy(
            incoming_properties(raw), delivery.defects, outcome, queue, time.time()
        )
        try:
            if isinstance(raw, PatchedMessage):
                await _test_quarantine(
                    raw, queue + QUARANTINE_SUFFIX, copy.headers or {}, context
                )
            else:
                # Confirmed before the original is acknowledged.
                await self._quarantine_copies.publish(
                    raw, queue + QUARANTINE_SUFFIX, copy
                )
        except Exception as exc:
            _log.error(
                "could not quarantine message %s (%s); requeueing it",
                delivery.message_id,
                type(exc).__name__,
                extra={"event": "quarantine_failed", "queue": queue},
            )
            await asyncio.sleep(_QUARANTINE_RETRY_PAUSE)
            raise NackMessage(requeue=True) from exc
        self._metrics.quarantined(str(reason))
        await msg.ack()


def _default_serializer() -> Any:
    """FastStream's own default: pydantic models and the like as JSON."""
    try:
        from fast_depends.pydantic import PydanticSerializer
    except ImportError:  # FastStream without pydantic: plain JSON
        return None
    return PydanticSerializer()


async def _test_quarantine(
    raw: Any, queue: str, headers: Mapping[str, Any], context: Any
) -> None:
    """Under TestRabbitBroker: hand the copy to the test's subscribers, if any."""
    subscriber = context.get("handler_")
    producer = subscriber._outer_config.producer  # the TestRabbitBroker's fake
    await producer.publish(
        RabbitPublishCommand(
            raw.body,
            routing_key=queue,
            _publish_type=PublishType.PUBLISH,
            headers=dict(headers),
            message_id=raw.message_id,
            timestamp=raw.timestamp,
            content_type=raw.content_type,
            content_encoding=raw.content_encoding,
            message_type=raw.type,
            correlation_id=raw.correlation_id,
            persist=True,
        )
    )


def _queue_of(context: Any) -> str | None:
    """The queue of the subscriber handling this message (None outside one)."""
    subscriber = context.get("handler_")
    queue = getattr(subscriber, "queue", None)
    name = getattr(queue, "name", None)
    return name if isinstance(name, str) and name else None


class _EnvelopeScope(BaseMiddleware):
    """One message's or one publish's middleware, made by EnvelopeMiddleware."""

    def __init__(self, msg: Any, /, *, context: Any, envelope: EnvelopeMiddleware):
        super().__init__(msg, context=context)
        self._envelope = envelope

    async def publish_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any
    ) -> Any:
        return await call_next(await self._envelope.seal_command(cmd))

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        return await self._envelope.open_message(call_next, msg, self.context)
