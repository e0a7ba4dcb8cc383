"""Pipelined, confirmed publishes on the consumer's own connection (pika boundary).

What a stage needs to hand messages on without one round trip each: a
confirm-mode channel on the connection that consumes, whose publishes do not
wait, and whose ``basic.ack`` / ``basic.nack`` / ``basic.return`` are
reported to a callback per message as the connection's I/O is serviced — in
the thread that consumes, so there is no second thread (and no GIL hand-off
per message) and nothing to lock.

The channel is a ``BlockingChannel`` used through the asynchronous channel
under it (``BlockingChannel.confirm_delivery`` would make each publish wait
for its confirm); its callbacks only do bookkeeping, never call
back into the connection. When the connection is lost, the unconfirmed
messages are simply forgotten: whoever published them still holds the input
they came from, unacknowledged, and the broker delivers it again.

That asynchronous channel (``BlockingChannel._impl``) and the connection's
output hook (``_adapter_emit_data``, as the producer's frame path uses it) are
not pika's public API: each is checked where it is taken. Without the channel
the outlet takes pika's public path, ``BlockingChannel.confirm_delivery``, on
which each publish waits for its confirm (the same outcomes, one round trip
each), and a WARNING says so once, naming the pika version; without the hook,
pika marshals each publish.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.spec
from envelope_mq.consumer.header_frames import negotiated_frame_max
from envelope_mq.shared.envelope import SealedMessage
from envelope_mq.shared.errors import BrokerUnavailableError

__all__ = [
    "CLOSED",
    "NACKED",
    "UNROUTABLE",
    "Framer",
    "Outlet",
    "Settled",
    "async_channel",
    "check_exchange",
    "output_hook",
]

_log = logging.getLogger(__name__)
_warned: set[str] = set()

#: ``on_settled(None)``: confirmed; otherwise one of these.
NACKED, UNROUTABLE, CLOSED = "nacked", "unroutable", "closed"
Settled = Callable[[str | None], None]
#: Builds every frame of one publish: (channel number, exchange, routing key,
#: message, largest body frame) -> the frames, in order.
Framer = Callable[[int, str, str, SealedMessage, int], list[bytes]]
# Frames held before one write, at most (a wait writes them sooner).
_WRITE_BATCH = 64
_OPEN_SECONDS = 30.0


def _nothing() -> None:
    """What a confirm schedules to end a wait: the wake-up is the point."""


def async_channel(channel: Any) -> pika.channel.Channel | None:
    """The asynchronous channel under a ``BlockingChannel``, or None.

    pika keeps it in the private ``_impl``: a pika that keeps it elsewhere (or
    something else under that name) gets None, and the outlet the public path.
    """
    impl = getattr(channel, "_impl", None)
    return impl if isinstance(impl, pika.channel.Channel) else None


def output_hook(connection: Any) -> Callable[[bytes], None] | None:
    """The output hook of a ``BlockingConnection``'s own connection, or None.

    Both are pika's privates (``_impl``, ``_adapter_emit_data``): see
    producer/transport.py's ``frame_writer`` for what the hook is.
    """
    emit = getattr(getattr(connection, "_impl", None), "_adapter_emit_data", None)
    return emit if callable(emit) else None


def _tell_public_path(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        _log.warning(
            "stage outputs are published through pika %s's public "
            "BlockingChannel (%s): each publish waits for its confirm",
            pika.__version__,
            why,
            extra={"event": "outlet_fallback"},
        )


def _properties(sealed: SealedMessage) -> pika.BasicProperties:
    meta = sealed.meta
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=dict(sealed.headers),
        message_id=meta.message_id,
        timestamp=meta.timestamp,
        content_type=meta.content_type,
        content_encoding=meta.content_encoding,
        type=meta.type,
    )


def check_exchange(exchange: str) -> Callable[[Any], None]:
    """A declare step that only checks ``exchange`` exists (404 otherwise)."""

    def declare(channel: Any) -> None:
        channel.exchange_declare(exchange, passive=True)

    return declare


class Outlet:
    """A confirm-mode channel of a ``BlockingConnection`` that never waits.

    Made by :class:`~consumer.transport.BlockingTransport` when it connects;
    used from the thread that services that connection only.
    ``pipelined=False`` takes the public path on purpose (it is how tests reach
    it on a pika that has the asynchronous channel where the outlet looks).
    """

    def __init__(
        self,
        connection: pika.BlockingConnection,
        framer: Framer | None = None,
        *,
        pipelined: bool = True,
    ) -> None:
        self._pending: OrderedDict[int, tuple[str, Settled]] = OrderedDict()
        self._returned: set[str] = set()
        self._next_tag = 1
        #: Why the channel closed (None while open).
        self.closed: str | None = None
        # A BlockingChannel (so that the connection can close it), used
        # through its asynchronous channel: its callbacks run as
        # process_data_events services the socket, and publishes never wait.
        self._blocking = connection.channel()
        channel = async_channel(self._blocking) if pipelined else None
        self._channel = channel
        self._emit: Callable[[bytes], None] | None = None
        if channel is None:
            _tell_public_path(
                "turned off" if not pipelined else "its private _impl channel changed"
            )
            self._blocking.confirm_delivery()
        else:
            channel.add_on_return_callback(self._on_return)
            channel.add_on_close_callback(self._on_close)
            ready: list[Any] = []
            channel.confirm_delivery(
                ack_nack_callback=self._on_confirm, callback=ready.append
            )
            self._wait(connection, ready, "enable publisher confirms")
            # With a framer, messages are framed by the caller's marshaller and
            # written together, one write per batch instead of three per
            # message (pika's private output hook, as the producer uses it).
            if framer is not None:
                self._emit = output_hook(connection)
        self._framer = framer
        self._body_max = negotiated_frame_max(connection) - 8
        self._wire: list[bytes] = []
        self._held = 0
        self._connection = connection
        #: Set while the owner waits in process_data_events for confirms: the
        #: next confirm ends that wait (process_data_events returns early only
        #: for deliveries and its own events, not for this channel's frames).
        self.armed = False

    @staticmethod
    def _wait(connection: pika.BlockingConnection, done: list[Any], what: str) -> None:
        deadline = time.monotonic() + _OPEN_SECONDS
        while not done:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"the broker did not {what} in time")
            connection.process_data_events(time_limit=0.05)

    def __len__(self) -> int:
        """Messages published and not yet settled."""
        return len(self._pending)

    @property
    def pipelined(self) -> bool:
        """False on the public path, where each publish waits for its confirm."""
        return self._channel is not None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        sealed: SealedMessage,
        on_settled: Settled,
    ) -> None:
        """Publish ``sealed`` (persistent, mandatory); ``on_settled`` says how it ended.

        Raises BrokerUnavailableError when the channel is closed.
        """
        if self.closed is not None:
            raise BrokerUnavailableError(f"publishing channel closed: {self.closed}")
        if self._channel is None:
            self._publish_and_wait(exchange, routing_key, sealed, on_settled)
            return
        if self._emit is not None and self._framer is not None:
            self._wire += self._framer(
                self._channel.channel_number,
                exchange,
                routing_key,
                sealed,
                self._body_max,
            )
            self._record(sealed.meta.message_id, on_settled)
            self._held += 1
            if self._held >= _WRITE_BATCH:
                self.flush()
            return
        self._channel.basic_publish(
            exchange, routing_key, sealed.body, _properties(sealed), mandatory=True
        )
        self._record(sealed.meta.message_id, on_settled)

    def _publish_and_wait(
        self,
        exchange: str,
        routing_key: str,
        sealed: SealedMessage,
        on_settled: Settled,
    ) -> None:
        # The public path: BlockingChannel in confirm mode waits for the
        # confirm and says how it went by what it raises.
        if self._blocking.is_closed:
            self.closed = "closed"
            raise BrokerUnavailableError("publishing channel closed")
        try:
            self._blocking.basic_publish(
                exchange, routing_key, sealed.body, _properties(sealed), mandatory=True
            )
        except pika.exceptions.UnroutableError:
            on_settled(UNROUTABLE)
        except pika.exceptions.NackError:
            on_settled(NACKED)
        except pika.exceptions.ChannelClosed as exc:
            self.closed = str(exc) or type(exc).__name__
            on_settled(CLOSED)
        else:
            on_settled(None)

    def _record(self, message_id: str, on_settled: Settled) -> None:
        self._pending[self._next_tag] = (message_id, on_settled)
        self._next_tag += 1

    def flush(self) -> None:
        """Write the frames held back by batching (before waiting for anything)."""
        if self._wire and self._emit is not None:
            wire, self._wire, self._held = self._wire, [], 0
            self._emit(b"".join(wire))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        pending, tag = self._pending, method.delivery_tag
        settled = []
        if method.multiple:
            while pending and next(iter(pending)) <= tag:
                settled.append(pending.popitem(last=False)[1])
        elif (one := pending.pop(tag, None)) is not None:
            settled.append(one)
        if settled and self.armed:
            self.armed = False
            self._connection.add_callback_threadsafe(_nothing)
        for message_id, on_settled in settled:
            if not acked:
                on_settled(NACKED)
            elif self._returned and message_id in self._returned:
                self._returned.discard(message_id)
                on_settled(UNROUTABLE)
            else:
                on_settled(None)

    def _on_return(
        self, _channel: Any, _method: Any, properties: Any, _body: bytes
    ) -> None:
        # Output ids are unique per input and index: the id names the message.
        message_id = getattr(properties, "message_id", None)
        if isinstance(message_id, str):
            self._returned.add(message_id)

    def _on_close(self, _channel: Any, reason: Exception) -> None:
        self.closed = str(reason) or type(reason).__name__
        pending, self._pending = self._pending, OrderedDict()
        for _message_id, on_settled in pending.values():
            on_settled(CLOSED)
