"""AsyncEncryptedPublisher: seal every message, publish it confirmed, on aio-pika.

Every :meth:`~AsyncEncryptedPublisher.publish` seals (on the loop on a data
key cache hit, in a thread on a miss: offload.py) and starts one small task
that writes the message (mandatory, persistent) and awaits its confirm; the
caller gets a Future at once and may publish the next message before the
first is confirmed, so confirms are pipelined, never one round trip per
message. An in-flight window bounds what is unconfirmed.

When the connection is lost, every unconfirmed message is published again,
unchanged, on the next connection, trying the broker URLs in turn with
backoff (``producer.reconnect.Reconnect``, the sync publisher's policy):
at-least-once, as the sync publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import ClassVar, Self

import aio_pika.abc
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from envelope_mq.aio.broker import (
    CONNECTION_ERRORS,
    connect,
    declare,
    outgoing_properties,
)
from envelope_mq.aio.offload import (
    DEFAULT_KMS_THREADS,
    AsyncSealer,
    CachedDataKeySource,
    KmsOffload,
)
from envelope_mq.producer.options import TransportOptions, TransportStats
from envelope_mq.producer.publisher import new_message_id
from envelope_mq.producer.reconnect import Reconnect
from envelope_mq.shared.amqp import (
    DEFAULT_EXCHANGE,
    ConnectionOptions,
    Topology,
    redact_url,
    split_urls,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import MessageMeta, Sealer
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    MessageNackedError,
    MessageUnroutableError,
    PublishNotConfirmedError,
)
from envelope_mq.shared.keycache import DataKeyCache
from envelope_mq.shared.kms import KeyProvider, KmsClient
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks
from envelope_mq.shared.regions import RegionClients, writer_keys_from_settings

__all__ = ["AsyncEncryptedPublisher"]

_log = logging.getLogger(__name__)
_COMPONENT = "publisher"
_ContextKey = tuple[tuple[str, str], ...]


class _Outgoing:
    __slots__ = ("body", "future", "message_id", "properties", "routing_key")

    def __init__(
        self,
        body: bytes,
        properties: Basic.Properties,
        routing_key: str,
        message_id: str,
        future: asyncio.Future[str],
    ) -> None:
        self.body = body
        self.properties = properties
        self.routing_key = routing_key
        self.message_id = message_id
        self.future = future


class AsyncEncryptedPublisher:
    """Seals messages with envelope encryption and publishes them, confirmed.

    ``await publisher.publish(body)`` returns an :class:`asyncio.Future` that
    resolves to the message_id when the broker confirms the message, or fails
    with MessageNackedError / MessageUnroutableError / BrokerUnavailableError.
    ``await publisher.send(body)`` waits for the confirm. Nothing is ever
    published unsealed: when no data key can be had, publish raises the
    KmsError. Use it as ``async with``; :meth:`start` connects and declares.
    ``wire_version`` is the wire format written (2, or 1: see
    EncryptedPublisher).
    """

    # The benchmark's sealing-off baseline only; nothing public chooses it.
    _sealer_class: ClassVar[type[Sealer]] = Sealer

    def __init__(
        self,
        urls: str | Sequence[str],
        data_keys: CachedDataKeySource,
        key_id: str,
        *,
        topology: Topology | None = None,
        exchange: str | None = None,
        context: Mapping[str, str] | None = None,
        options: TransportOptions | None = None,
        connection_options: ConnectionOptions | None = None,
        metrics: MetricsHooks | None = None,
        kms_threads: int = DEFAULT_KMS_THREADS,
        wire_version: int = 2,
    ) -> None:
        if topology is not None and exchange not in (None, topology.exchange):
            raise ConfigError("exchange differs from the topology's exchange")
        self._urls = split_urls(urls)
        self._where = ", ".join(redact_url(u) for u in self._urls)
        self._topology = topology
        self._exchange_name = (
            topology.exchange if topology else exchange or DEFAULT_EXCHANGE
        )
        self._default_routing_key = topology.binding_key if topology else None
        self._data_keys = data_keys
        self._key_id = key_id
        self._wire_version = wire_version
        self._options = options or TransportOptions()
        self._connection_options = connection_options or ConnectionOptions()
        self._metrics = NULL_METRICS if metrics is None else metrics
        if isinstance(data_keys, DataKeyCache):
            self._metrics.watch_cache(data_keys)
        self._offload = KmsOffload(kms_threads)
        self._default_sealer = self._new_sealer(context)
        self._sealers: dict[_ContextKey, AsyncSealer] = {}
        self._reconnect = Reconnect(self._options, len(self._urls), self._where)
        self._connection: aio_pika.abc.AbstractConnection | None = None
        # aiormq's channel under aio-pika's: publishing skips aio-pika's
        # Message and Exchange (their cost per message was ours to cut).
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._generation = 0
        self._ready = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._window: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: BrokerError | None = None
        self._closed = False
        self._owned_kms: KmsClient | RegionClients | None = None
        self._published = self._confirmed = self._failures = self._republished = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        topology: Topology | None = None,
        exchange: str | None = None,
        key_id: str | None = None,
        context: Mapping[str, str] | None = None,
        provider: KeyProvider | None = None,
        options: TransportOptions | None = None,
        metrics: MetricsHooks | None = None,
    ) -> AsyncEncryptedPublisher:
        """Build a publisher from ``settings`` (KMS client, key cache, URLs)."""
        master = key_id or settings.kms_key_id
        if not master:
            raise ConfigError(
                "a KMS master key id is required (KMS_KEY_ID or --key-id)"
            )
        owned: KmsClient | RegionClients | None = None
        if provider is None:
            # One KMS; with KMS_WRAP_ALSO, a copy of each data key per region.
            provider, owned = writer_keys_from_settings(settings, metrics)
        if metrics is not None:
            provider = metrics.instrument_provider(provider)
        cache = DataKeyCache(
            provider,
            max_age=settings.data_key_max_age,
            max_messages=settings.data_key_max_messages,
        )
        publisher = cls(
            settings.rabbitmq_urls,
            cache,
            master,
            topology=topology,
            exchange=exchange,
            context=context,
            options=options,
            metrics=metrics,
            wire_version=settings.wire_version,
        )
        publisher._owned_kms = owned  # closed with the publisher
        return publisher

    @property
    def exchange(self) -> str:
        """The exchange every message goes to."""
        return self._exchange_name

    async def start(self) -> None:
        """Connect (trying the URLs in order) and declare; raises BrokerError."""
        if self._window is None:
            self._window = asyncio.Semaphore(self._options.max_in_flight)
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                while True:
                    try:
                        await self._open()
                        break
                    except BrokerUnavailableError as exc:
                        if self._reconnect.open_failed(exc):
                            continue
                        await asyncio.sleep(self._reconnect.backoff())
        except TimeoutError:
            self._offload.close()
            raise BrokerUnavailableError(
                f"cannot connect to RabbitMQ at {self._where} within "
                f"{self._options.connect_timeout:.0f} s"
            ) from None
        except BaseException:
            self._offload.close()
            raise
        self._metrics.broker_connected(_COMPONENT, reconnect=False)

    @property
    def key_id(self) -> str:
        """The master key every message is sealed under (as configured)."""
        return self._key_id

    @property
    def wire_version(self) -> int:
        """The wire format written (2, or 1)."""
        return self._wire_version

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        type: str | None = None,  # the AMQP property's own name
        context: Mapping[str, str] | None = None,
        causation_id: str | None = None,
    ) -> asyncio.Future[str]:
        """Seal ``body`` and hand it to the broker; the Future resolves on ack.

        Waits while the in-flight window is full (backpressure).
        ``causation_id`` (wire format v2 only) names the message this one was
        made from, bound into the tag (``ReceivedMessage.causation_id``).

        Raises:
            KmsError: no data key could be had; nothing was published.
            SealingError: invalid input.
            BrokerError: the publisher is closed or gave up reconnecting.
        """
        key = routing_key if routing_key is not None else self._default_routing_key
        if key is None:
            raise ConfigError("a routing key is required when no queue is configured")
        self._check_open()
        meta = MessageMeta(
            message_id=message_id or new_message_id(),
            timestamp=int(time.time()),
            content_type=content_type,
            content_encoding=content_encoding,
            type=type,
            causation_id=causation_id,
        )
        sealer = self._default_sealer if context is None else self._sealer_for(context)
        sealed = await sealer.seal(body, meta)
        window = self._window
        assert window is not None  # set by start()  # noqa: S101
        await window.acquire()
        try:
            self._check_open()
        except BrokerError:
            window.release()
            raise
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        out = _Outgoing(
            sealed.body, outgoing_properties(sealed), key, meta.message_id, future
        )
        task = asyncio.create_task(self._deliver(out))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)
        self._metrics.published()
        return future

    async def send(
        self,
        body: bytes,
        *,
        timeout: float | None = 30.0,
        routing_key: str | None = None,
        message_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        type: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> str:
        """Publish one message and wait for its confirm; return its message_id.

        Raises PublishNotConfirmedError when no confirm came within ``timeout``.
        """
        message_id = message_id or new_message_id()
        future = await self.publish(
            body,
            routing_key=routing_key,
            message_id=message_id,
            content_type=content_type,
            content_encoding=content_encoding,
            type=type,
            context=context,
        )
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise PublishNotConfirmedError(
                f"message {message_id} not confirmed within {timeout} s",
                message_id=message_id,
            ) from None

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message published so far is confirmed or failed."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> None:
        """Flush, then disconnect. Raises PublishNotConfirmedError on timeout."""
        if self._closed:
            return
        flushed = await self.flush(timeout)
        self._closed = True
        left = len(self._tasks)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        await self._close_connection()
        self._offload.close()
        if self._owned_kms is not None:
            self._owned_kms.close()
        self._metrics.stopped(_COMPONENT)
        if not flushed and left:
            raise PublishNotConfirmedError(
                f"{left} message(s) were not confirmed before close"
            )

    def stats(self) -> TransportStats:
        """Publishing counters (published, confirmed, failed, republished...)."""
        return TransportStats(
            self._published,
            self._confirmed,
            self._failures,
            self._republished,
            self._reconnect.reconnects,
        )

    # ---- one message ----------------------------------------------------------

    async def _deliver(self, out: _Outgoing) -> None:
        attempt = 0
        try:
            while True:
                await self._ready.wait()
                if self._failed is not None:
                    self._fail(out, self._failed)
                    return
                channel, generation = self._channel, self._generation
                assert channel is not None  # noqa: S101 - ready means open
                attempt += 1
                if attempt > 1:
                    self._republished += 1
                    self._metrics.republished(1)
                self._published += 1
                try:
                    result = await channel.basic_publish(
                        out.body,
                        exchange=self._exchange_name,
                        routing_key=out.routing_key,
                        properties=out.properties,
                        mandatory=True,
                    )
                    if isinstance(result, aiormq.abc.DeliveredMessage):
                        raise aiormq.exceptions.PublishError(result, result)
                except aiormq.exceptions.PublishError:
                    self._metrics.returned()
                    self._fail(
                        out,
                        MessageUnroutableError(
                            f"publish {out.message_id}: the message matched no queue"
                        ),
                    )
                    return
                except aiormq.exceptions.DeliveryError:
                    self._metrics.nacked(1)
                    self._fail(
                        out,
                        MessageNackedError(
                            f"publish {out.message_id}: the broker nacked the message"
                        ),
                    )
                    return
                except CONNECTION_ERRORS as exc:
                    # Unconfirmed on a lost connection: in doubt, so published
                    # again, unchanged, once a new connection is up.
                    self._lost(generation, exc)
                    continue
                self._confirmed += 1
                self._metrics.confirmed(1)
                if not out.future.done():
                    out.future.set_result(out.message_id)
                return
        except asyncio.CancelledError:
            self._fail(out, BrokerUnavailableError("the publisher closed first"))
            raise

    def _fail(self, out: _Outgoing, error: BrokerError) -> None:
        self._failures += 1
        self._metrics.publish_failed(1)
        if isinstance(error, PublishNotConfirmedError):
            error.message_id = out.message_id
        if not out.future.done():
            out.future.set_exception(type(error)(str(error)))
            out.future.exception()  # retrieved: a caller who does not look is fine

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._window is not None:
            self._window.release()
        if not self._tasks:
            self._idle.set()

    # ---- the connection -------------------------------------------------------

    async def _open(self) -> None:
        url = self._urls[self._reconnect.url()]
        connection = await connect(url, self._connection_options)
        try:
            channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            if self._topology is not None:
                await declare(channel, self._topology)
            elif self._exchange_name != "":
                await channel.get_exchange(self._exchange_name)  # it must exist
            underlay = await channel.get_underlay_channel()
        except CONNECTION_ERRORS as exc:
            await _close_quietly(connection)
            raise BrokerUnavailableError(
                f"cannot open a channel on {redact_url(url)}: {type(exc).__name__}"
            ) from exc
        except BaseException:
            await _close_quietly(connection)
            raise
        self._reconnect.opened()
        self._reconnect.ready(reconnected=self._generation > 0)
        self._connection, self._channel = connection, underlay
        self._generation += 1
        generation = self._generation
        connection.close_callbacks.add(
            lambda _conn, exc=None: self._lost(generation, exc)
        )
        self._ready.set()

    def _lost(self, generation: int, error: BaseException | None) -> None:
        if generation != self._generation or self._closed or not self._ready.is_set():
            return  # an older connection's news, or already reconnecting
        self._ready.clear()
        self._reconnect.lost(error or ConnectionError("connection closed"))
        self._metrics.broker_lost(_COMPONENT, type(error).__name__ if error else "")
        _log.warning(
            "lost the connection to RabbitMQ; reconnecting",
            extra={"event": "broker_lost", "component": _COMPONENT},
        )
        self._reconnecting = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        old, self._connection = self._connection, None
        if old is not None:
            await _close_quietly(old)
        while not self._closed:
            if (expired := self._reconnect.expired()) is not None:
                self._failed = expired
                self._ready.set()  # wakes every waiting message, to fail
                return
            try:
                await self._open()
            except BrokerUnavailableError as exc:
                if not self._reconnect.open_failed(exc):
                    await asyncio.sleep(self._reconnect.backoff())
                continue
            except BrokerError as exc:
                self._failed = exc
                self._ready.set()
                return
            self._metrics.broker_connected(_COMPONENT, reconnect=True)
            _log.info(
                "reconnected to RabbitMQ; re-publishing %d message(s)",
                len(self._tasks),
                extra={
                    "event": "broker_reconnected",
                    "component": _COMPONENT,
                    "count": len(self._tasks),
                },
            )
            return

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._ready.clear()
        if connection is not None:
            await _close_quietly(connection)

    def _check_open(self) -> None:
        if self._failed is not None:
            raise type(self._failed)(str(self._failed)) from self._failed
        if self._closed or self._window is None:
            raise BrokerError("the publisher is closed or not started")

    def _sealer_for(self, context: Mapping[str, str]) -> AsyncSealer:
        key = tuple(sorted(context.items()))
        sealer = self._sealers.get(key)
        if sealer is None:
            sealer = self._sealers[key] = self._new_sealer(context)
        return sealer

    def _new_sealer(self, context: Mapping[str, str] | None) -> AsyncSealer:
        return AsyncSealer(
            self._data_keys,
            self._key_id,
            context,
            self._offload,
            self._metrics,
            self._sealer_class,
            wire_version=self._wire_version,
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving on an error must not hang on confirms that may never come.
        await self.close(None if exc is None else 30.0)

    def __repr__(self) -> str:
        return (
            f"AsyncEncryptedPublisher(exchange={self._exchange_name!r}, "
            f"key_id={self._key_id!r})"
        )


async def _close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    # On a dead connection there is nothing left to say to the broker.
    with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
        await connection.close()
