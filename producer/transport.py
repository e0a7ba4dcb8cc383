"""The publisher's pika transport: one I/O thread, pipelined confirms, reconnects.

Callers hand sealed messages to :meth:`ConfirmingTransport.submit`, which appends
them to a deque and wakes the I/O thread at most once per batch (a thread-safe
callback per message would cost more than the publish itself). The I/O thread
runs a pika ``SelectConnection``: it drains the deque into ``basic_publish`` on a
confirm-mode channel and resolves each message's Future when the broker's
``basic.ack`` (usually ``multiple=True``, covering a range of delivery tags)
arrives. ``mandatory=True`` turns an unroutable message into ``basic.return``
and a failed Future instead of a silent drop.

When the connection is lost, every unconfirmed message goes back to the front
of the deque, unchanged (same message_id, same sealed body and headers), and is
published again after reconnecting, trying the broker URLs in turn with
exponential backoff (see reconnect.py): at-least-once delivery.

A ``basic.nack`` fails that message's Future with MessageNackedError (the
caller decides whether to publish it again: a nack says the broker did not take
the message) and retires the channel (see channels.py).

Only this module touches pika; the modules it leans on are free of I/O.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions
import pika.spec
from envelope_mq.producer import frames
from envelope_mq.producer.channels import ChannelRetirement
from envelope_mq.producer.confirms import ConfirmTracker, Outgoing
from envelope_mq.producer.encoder import OutgoingEncoder
from envelope_mq.producer.options import TransportOptions, TransportStats
from envelope_mq.producer.reconnect import Reconnect
from envelope_mq.producer.window import InFlightWindow
from envelope_mq.shared.amqp import (
    ConnectionOptions,
    connection_parameters,
    describe_error,
    redact_url,
    split_urls,
)
from envelope_mq.shared.amqp import translate_error as _translate
from envelope_mq.shared.envelope import SealedMessage
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    PublishNotConfirmedError,
)
from envelope_mq.shared.observability import NULL_METRICS, MetricsHooks
from pika.adapters.select_connection import IOLoop

__all__ = [
    "ConfirmingTransport",
    "Declare",
    "TransportOptions",
    "TransportStats",
    "frame_writer",
]

_log = logging.getLogger(__name__)

# Messages published per turn of the I/O loop before it goes back to the socket
# (to write them and read confirms): large enough to amortise the wake-up,
# small enough to keep confirms flowing.
_BATCH = 1000
# How long the I/O thread lets callers fill the deque between two drains while
# messages flow; it costs latency only under load (an idle loop is woken at once).
_POLL_INTERVAL = 0.001
# After a nack, how long the retired channel may take to deliver the confirms of
# what was already published on it; what is still unconfirmed then is in doubt
# and published again on the next channel.
_RETIRE_TIMEOUT = 30.0
# How often the I/O loop reports that it still turns (liveness); the health
# state's stall threshold is far longer.
_BEAT_INTERVAL = 5.0
_COMPONENT = "publisher"

Declare = Callable[[Any, Callable[[], None]], None]


def frame_writer(connection: Any) -> Callable[[bytes], None] | None:
    """pika's private output hook of ``connection``, or None when it has none.

    ``_adapter_emit_data`` is where pika's own ``_send_message`` ends, after
    marshalling: pre-built frames written there skip pika's marshaller. It is
    not pika's public API, so a pika without it (or with something else under
    that name) gets the public ``Channel.basic_publish`` instead.
    """
    emit = getattr(connection, "_adapter_emit_data", None)
    return emit if callable(emit) else None


def _properties(header: bytes) -> pika.spec.BasicProperties:
    """The properties of a content header payload built by frames.py.

    The public path publishes exactly what the frame path would have written:
    the same payload, decoded by pika's own decoder (class, weight and body
    size take its first 12 bytes).
    """
    properties = pika.spec.BasicProperties()
    properties.decode(header, 12)
    return properties


class ConfirmingTransport:
    """Publishes sealed messages with pipelined publisher confirms."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        declare: Declare | None = None,
        options: TransportOptions | None = None,
        connection_options: ConnectionOptions | None = None,
        metrics: MetricsHooks | None = None,
    ) -> None:
        self._options = options or TransportOptions()
        self._metrics = NULL_METRICS if metrics is None else metrics
        self._params = connection_parameters(urls, connection_options)
        self._where = ", ".join(redact_url(u) for u in split_urls(urls))
        self._declare = declare
        self._window = InFlightWindow(self._options.max_in_flight)
        self._outbox: deque[Outgoing] = deque()
        self._encoder = OutgoingEncoder()
        self._submit_lock = threading.Lock()
        self._wake_scheduled = False
        self._closed = False
        self._failed: BrokerError | None = None
        self._ioloop = IOLoop()
        self._thread = threading.Thread(
            target=self._run, name="emq-publisher", daemon=True
        )
        self._started = threading.Event()
        # Owned by the I/O thread from here on.
        self._connection: Any = None
        self._channel: Any = None
        self._ready = False
        self._ever_ready = False
        self._closing = False
        # None: pika's public basic_publish (see frame_writer); decided at
        # every connect, told once in the log.
        self._emit: Callable[[bytes], None] | None = None
        self._path_told = False
        self._body_max = 131_072 - 8
        self._confirms = ConfirmTracker(self._window, self._metrics)
        self._reconnect = Reconnect(self._options, len(self._params), self._where)
        self._retirement = ChannelRetirement()

    # ---- caller side -------------------------------------------------------

    def start(self) -> None:
        """Connect, open a confirm-mode channel and declare; raises BrokerError."""
        self._thread.start()
        if not self._started.wait(self._options.connect_timeout):
            self._stop_thread()
            raise BrokerUnavailableError(
                f"cannot connect to RabbitMQ at {self._where} within "
                f"{self._options.connect_timeout:.0f} s"
            )
        if self._failed is not None:
            self._stop_thread()
            raise self._failed

    def submit(
        self, exchange: str, routing_key: str, sealed: SealedMessage
    ) -> Future[str]:
        """Queue one sealed message; its Future resolves to the message_id on ack."""
        out = self._encoder.encode(exchange, routing_key, sealed)
        # Handed over means in flight: the caller can no longer cancel it.
        out.future.set_running_or_notify_cancel()
        self._window.acquire()
        with self._submit_lock:
            error = self._failed or (
                BrokerError("the publisher is closed") if self._closed else None
            )
            if error is None:
                self._outbox.append(out)
        if error is not None:
            self._window.release()
            raise type(error)(str(error)) from error
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._ioloop.add_callback_threadsafe(self._drain)
        return out.future

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted message is settled; False on timeout."""
        return self._window.wait_empty(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the connection and stop the I/O thread.

        Raises:
            PublishNotConfirmedError: messages were still unconfirmed at the
                deadline; their Futures fail with BrokerUnavailableError.
        """
        if self._closed:
            return
        flushed = self.flush(timeout) if self._thread.is_alive() else False
        with self._submit_lock:
            self._closed = True
        self._stop_thread()
        left = self._fail_everything(
            BrokerUnavailableError("the publisher closed first")
        )
        self._metrics.stopped(_COMPONENT)
        if not flushed and left:
            raise PublishNotConfirmedError(
                f"{left} message(s) were not confirmed before close"
            )

    def take_unseen_failures(self) -> Counter[str]:
        """Failed publishes whose Future nobody looked at, by cause (once each)."""
        return self._confirms.failures.take_unseen()

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        confirms = self._confirms
        return TransportStats(
            confirms.published,
            confirms.confirmed,
            confirms.failed,
            confirms.republished,
            self._reconnect.reconnects,
            self._retirement.replaced,
        )

    def _stop_thread(self) -> None:
        if self._thread.is_alive():
            self._ioloop.add_callback_threadsafe(self._shutdown)
            self._thread.join(30)
        self._ioloop.close()

    # ---- I/O thread ---------------------------------------------------------

    def _run(self) -> None:
        self._beat()
        self._connect()
        while True:
            try:
                self._ioloop.start()
            except Exception as exc:  # the one place that must not die
                # An exception escaping a pika callback (pika itself raises
                # ValueError when a connection is reset while being set up)
                # must not kill the only thread that can publish.
                if self._closing:
                    return
                self._recover(exc)
            else:
                return

    def _beat(self) -> None:
        self._metrics.alive(_COMPONENT)
        self._ioloop.call_later(_BEAT_INTERVAL, self._beat)

    def _recover(self, error: Exception) -> None:
        _log.error(
            "unexpected %s in the publisher's I/O loop; reconnecting",
            type(error).__name__,
            exc_info=error,
        )
        connection, self._connection = self._connection, None  # now stale
        lost = self._ready or (connection is not None and connection.is_open)
        with contextlib.suppress(Exception):  # best effort on a broken connection
            if connection is not None and connection.is_open:
                connection.close()
        if lost and self._ever_ready:
            self._connection_lost(error)
        else:
            self._open_failed(error)

    def _connect(self) -> None:
        if self._closing:
            return
        params = self._params[self._reconnect.url()]
        self._connection = pika.SelectConnection(
            params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._ioloop,
        )

    def _on_connection_open(self, connection: Any) -> None:
        if connection is not self._connection:
            return  # a connection _recover() gave up on
        self._reconnect.opened()
        # Frames built in frames.py go straight to pika's output buffer when
        # the hook is there: the same path pika's own _send_message ends in,
        # minus its marshalling.
        self._emit = frame_writer(connection) if self._options.write_frames else None
        if not self._path_told:
            self._path_told = True
            _log.debug(
                "publishing through %s",
                "pre-built frames (pika's connection._adapter_emit_data)"
                if self._emit is not None
                else "pika's public Channel.basic_publish",
                extra={"event": "publish_path", "component": _COMPONENT},
            )
        self._body_max = connection.params.frame_max - 8  # frame header + end octet
        self._open_channel(connection)

    def _open_channel(self, connection: Any) -> None:
        # A timer may outlive its connection: a reconnect opens its own channel.
        if (
            connection is self._connection
            and self._channel is None
            and connection is not None
            and connection.is_open
        ):
            connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=functools.partial(self._on_confirm, channel),
            callback=lambda _frame: self._on_confirm_mode(channel),
        )

    def _on_confirm_mode(self, channel: Any) -> None:
        if self._declare is None:
            self._on_ready()
        else:
            self._declare(channel, self._on_ready)

    def _on_ready(self) -> None:
        self._ready = True
        self._confirms.new_channel()
        self._reconnect.ready(reconnected=self._ever_ready)
        self._retirement.ready()
        self._metrics.broker_connected(_COMPONENT, reconnect=self._ever_ready)
        if self._ever_ready:
            _log.info(
                "reconnected to RabbitMQ; re-publishing %d message(s)",
                len(self._outbox),
                extra={
                    "event": "broker_reconnected",
                    "component": _COMPONENT,
                    "count": len(self._outbox),
                },
            )
        self._ever_ready = True
        self._started.set()
        self._drain()

    def _drain(self) -> None:
        # While messages keep coming, this re-arms itself on a short timer and
        # callers need not wake the loop (a pipe write and a thread switch
        # each); only when it finds nothing to do does it go idle and let the
        # next submit() wake it.
        channel = self._channel
        if not self._ready or channel is None or not channel.is_open:
            self._wake_scheduled = False
            return  # _on_ready drains once the channel is back
        batch = _BATCH
        if self._retirement.probing:  # one message, then nothing until its confirm
            if self._confirms:
                self._wake_scheduled = False
                return  # _on_confirm drains once the probe is acked
            batch = 1
        emit = self._emit
        sent = (
            self._publish_frames(emit, channel.channel_number, batch)
            if emit is not None
            else self._publish_public(channel, batch)
        )
        outbox = self._outbox
        if sent:
            self._ioloop.call_later(0 if outbox else _POLL_INTERVAL, self._drain)
            return
        self._wake_scheduled = False
        if outbox:  # appended after our look, by a caller who saw the flag still set
            self._wake_scheduled = True
            self._ioloop.call_later(0, self._drain)

    def _publish_frames(
        self, emit: Callable[[bytes], None], number: int, batch: int
    ) -> bool:
        """Up to ``batch`` messages as pre-built frames, in one write."""
        body_max = self._body_max
        outbox, record = self._outbox, self._confirms.record
        wire: list[bytes] = []
        for _ in range(batch):
            try:
                out = outbox.popleft()
            except IndexError:
                break
            wire += frames.frame_message(
                number, out.method, out.header, out.body, body_max
            )
            record(out)
        if not wire:
            return False
        # One write per batch instead of three per message (see frames.py).
        emit(b"".join(wire))
        return True

    def _publish_public(self, channel: Any, batch: int) -> bool:
        """Up to ``batch`` messages through pika's public ``basic_publish``.

        Delivery tags, confirms, returns and re-publication work as on the
        frame path: one basic.publish per message on the same confirm-mode
        channel, always ``mandatory``.
        """
        outbox, record = self._outbox, self._confirms.record
        publish = channel.basic_publish
        sent = False
        for _ in range(batch):
            try:
                out = outbox.popleft()
            except IndexError:
                break
            # Recorded first: should pika raise, the message is unconfirmed
            # and goes back to the outbox with the rest on the reconnect.
            record(out)
            publish(
                out.exchange,
                out.routing_key,
                out.body,
                _properties(out.header),
                mandatory=True,
            )
            sent = True
        return sent

    def _on_confirm(self, channel: Any, frame: Any) -> None:
        if channel is not self._channel:
            return  # a retired channel's late word: its messages were re-queued
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        self._confirms.settle(method.delivery_tag, method.multiple, acked)
        if not acked:
            self._retire(channel)
        elif self._retirement.acked():
            self._drain()  # the probe went through: the rest may follow
        if self._retirement.retiring and not self._confirms:
            self._close_retired(channel)

    def _retire(self, channel: Any) -> None:
        """Publish nothing more on ``channel``; replace it once it is settled."""
        if not self._retirement.nacked():
            return  # already retired
        self._ready = False  # _drain leaves the outbox alone from here on
        _log.warning(
            "the broker nacked a publish; replacing the publishing channel "
            "(%d in a row)",
            self._retirement.nack_streak,
            extra={
                "event": "channel_retired",
                "component": _COMPONENT,
                "count": self._retirement.nack_streak,
            },
        )
        self._ioloop.call_later(
            _RETIRE_TIMEOUT, functools.partial(self._close_retired, channel)
        )

    def _close_retired(self, channel: Any) -> None:
        if channel is self._channel and self._retirement.retiring and channel.is_open:
            channel.close()  # _on_channel_closed opens the next one

    def _replace_channel(self) -> None:
        # Still unconfirmed after _RETIRE_TIMEOUT: in doubt, so published again
        # unchanged and ahead of anything newer, as after a connection loss.
        self._outbox.extendleft(reversed(self._confirms.take_unconfirmed()))
        self._ioloop.call_later(
            self._reconnect.delay(self._retirement.replacing()),
            functools.partial(self._open_channel, self._connection),
        )

    def _on_return(
        self, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        # basic.return always precedes the basic.ack of the same message.
        self._confirms.returned(body)

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._ready = False
        retired = self._retirement.closed()
        if self._closing:
            return
        if retired and isinstance(reason, pika.exceptions.ChannelClosedByClient):
            self._replace_channel()
            return
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            return  # a connection loss: _on_connection_closed handles it
        error = _translate(reason, "the broker closed the publishing channel")
        if not self._ever_ready:
            self._fail_start(error)
            return
        # These messages are in doubt and republishing would hit the same refusal.
        _log.warning(
            "%s", error, extra={"event": "channel_closed", "component": _COMPONENT}
        )
        self._metrics.broker_lost(_COMPONENT, "channel closed by the broker")
        self._confirms.fail_unconfirmed(error)
        self._ioloop.call_later(
            self._reconnect.backoff(),
            functools.partial(self._open_channel, self._connection),
        )

    def _on_open_error(self, connection: Any, error: BaseException) -> None:
        if connection is self._connection:
            self._open_failed(error)

    def _open_failed(self, error: BaseException) -> None:
        self._connection = None
        if self._reconnect.open_failed(error):
            self._connect()  # the next URL of this round, right away
            return
        if not self._ever_ready:
            self._fail_start(
                _translate(error, f"cannot connect to RabbitMQ at {self._where}")
            )
            return
        self._schedule_reconnect(error)

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if self._closing:
            self._ioloop.stop()
            return
        if connection is self._connection:
            self._connection_lost(reason)

    def _connection_lost(self, reason: BaseException) -> None:
        self._connection = None
        self._channel = None
        self._ready = False
        if not self._ever_ready:
            self._fail_start(
                _translate(reason, f"RabbitMQ at {self._where} closed the connection")
            )
            return
        self._metrics.broker_lost(
            _COMPONENT, f"connection lost ({type(reason).__name__})"
        )
        _log.warning(
            "lost the RabbitMQ connection (%s); %d message(s) unconfirmed",
            describe_error(reason),
            len(self._confirms),
            extra={
                "event": "broker_lost",
                "component": _COMPONENT,
                "count": len(self._confirms),
            },
        )
        # Unchanged and in their original order, ahead of anything newer.
        self._outbox.extendleft(reversed(self._confirms.take_unconfirmed()))
        self._reconnect.lost(reason)  # the next URL: its node may be the one up
        self._schedule_reconnect()

    def _schedule_reconnect(self, failed: BaseException | None = None) -> None:
        """Try again after the backoff; ``failed``: why the last attempt failed
        (one warning per attempt, with its cause; pika's own lines stay quiet)."""
        error = self._reconnect.expired()
        if error is not None:
            self._failed = error
            self._fail_everything(error)
            self._ioloop.stop()
            return
        delay = self._reconnect.backoff()
        if failed is not None:
            _log.warning(
                "reconnect to %s failed (%s); retrying in %.1fs",
                self._where,
                describe_error(failed),
                delay,
                extra={
                    "event": "reconnect_failed",
                    "component": _COMPONENT,
                    "delay": round(delay, 3),
                },
            )
        self._ioloop.call_later(delay, self._connect)

    def _fail_start(self, error: BrokerError) -> None:
        self._failed = error
        self._closing = True
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()  # _on_connection_closed stops the loop
        else:
            self._ioloop.stop()
        self._started.set()

    def _fail_everything(self, error: BrokerError) -> int:
        """Fail unconfirmed and queued messages (I/O thread, or after it ended)."""
        failed = self._confirms.fail_unconfirmed(error)
        queued: list[Outgoing] = []
        while self._outbox:
            queued.append(self._outbox.popleft())
        return failed + self._confirms.fail(queued, error)

    def _shutdown(self) -> None:
        self._closing = True
        connection = self._connection
        if connection is None or connection.is_closed:
            self._ioloop.stop()
            return
        if not connection.is_closing:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                self._ioloop.stop()
                return
        # _on_connection_closed stops the loop once the socket is closed; should
        # the broker never answer Connection.Close, stop anyway.
        self._ioloop.call_later(5.0, self._ioloop.stop)
