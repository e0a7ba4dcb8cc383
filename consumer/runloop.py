"""RunLoop: the life of a consuming connection around a consume loop.

What the sync consumer (consumer/worker.py) and the pipeline stage
(envelope_mq.stage) share: connect, keep the KMS keep-alive attached to the
connection while running, on a lost connection reconnect with backoff through
the broker URL list (consumer/reconnects.py: a connection that died young
waits before its first attempt, so that one lost again and again right after
connecting cannot become a hot loop),
wait without a connection to service, and stop. What each does with a
delivery stays with it: the loop only calls its ``consume``.

Log lines go to the owner's logger, so that they keep their source's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.keepalive import KeepAliveProvider
from envelope_mq.consumer.reconnects import Reconnects
from envelope_mq.consumer.transport import BlockingTransport
from envelope_mq.shared.amqp import redact_url
from envelope_mq.shared.errors import BrokerError, BrokerUnavailableError
from envelope_mq.shared.observability import MetricsHooks

__all__ = ["RunLoop"]


class _Counts(Protocol):
    reconnects: int


def _idle() -> bool:
    return False


class RunLoop:
    """Connects ``transport``, runs a consume loop on it and reconnects it.

    ``component`` names the owner in metrics labels and log lines, ``queue``
    in log lines; ``stats.reconnects`` counts the reconnects; ``backoff``
    paces them (0.5 s doubling up to 15 s by default). The owner reads
    :attr:`stopping` (a plain attribute: its loops test it per delivery) and
    passes :meth:`stop_requested` to ``transport.sleep``.
    """

    def __init__(
        self,
        transport: BlockingTransport,
        urls: Sequence[str],
        *,
        component: str,
        queue: str,
        metrics: MetricsHooks,
        backoff: Backoff | None,
        keep_alive: KeepAliveProvider | None,
        stats: _Counts,
        log: logging.Logger,
    ) -> None:
        self._transport = transport
        self._urls = urls
        self._component = component
        self._metrics = metrics
        self._reconnects = Reconnects(
            backoff or Backoff(initial=0.5, cap=15.0),
            log,
            component=component,
            queue=queue,
        )
        self._keep_alive = keep_alive
        self._stats = stats
        self.connected = False
        #: Set by :meth:`stop`; reset when :meth:`run` returns.
        self.stopping = False

    def stop(self) -> None:
        """Ask :meth:`run` to return. Only sets a flag: safe from a signal handler."""
        self.stopping = True

    def stop_requested(self) -> bool:
        return self.stopping

    def open(self) -> None:
        """Open the transport (the first connection, not a reconnect)."""
        self._transport.open()
        self.connected = True
        self._reconnects.connected()
        self._metrics.broker_connected(self._component, reconnect=False)

    def close(self) -> bool:
        """Close the transport; whether it was connected. Never raises."""
        was_connected, self.connected = self.connected, False
        self._transport.close()
        return was_connected

    def run(
        self,
        connect: Callable[[], object],
        consume: Callable[[], None],
        close: Callable[[], None],
        *,
        reached_limit: Callable[[], bool],
        busy: Callable[[], bool] = _idle,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """``connect()``, then ``consume()`` until stopped or at the limit.

        ``busy()``: work in flight that must settle before the loop may end
        (it ends only when not busy, even when stopping or at the limit).
        A BrokerError from ``consume()`` is a lost connection: ``on_lost()``
        drops what cannot be settled any more, and the loop reconnects.
        ``close()`` runs at the end when this run connected, or when the
        connection was lost and not regained (so that the next run connects).
        """
        transport = self._transport
        connected_here = not self.connected
        try:
            connect()
        except BaseException:
            self.stopping = False
            raise
        if self._keep_alive is not None:
            self._keep_alive.attach(transport.pump)
        try:
            while busy() or not (self.stopping or reached_limit()):
                try:
                    consume()
                except BrokerError as exc:
                    if self.stopping and not busy():
                        break
                    self._lost(exc, on_lost)
        finally:
            if self._keep_alive is not None:
                self._keep_alive.attach(None)
            # A connection lost and not regained (stop() came first) is closed,
            # so that the next run() connects again.
            if connected_here or not transport.consuming:
                close()
            self.stopping = False  # a stop() before run() still counts; now reset

    def _lost(self, exc: BrokerError, on_lost: Callable[[], None] | None) -> None:
        self._metrics.broker_lost(
            self._component, f"connection lost ({type(exc).__name__})"
        )
        self._reconnects.lost(exc)
        if on_lost is not None:
            on_lost()
        self._transport.abandon()
        self._reconnect()

    def _reconnect(self) -> None:
        """Open a new connection, pacing the attempts as :class:`Reconnects` says."""
        where = ", ".join(redact_url(u) for u in self._urls)
        self._wait(self._reconnects.pause())
        for delay in self._reconnects.delays():
            if self.stopping:
                return
            try:
                self._transport.open()
            except BrokerUnavailableError as exc:
                self._reconnects.failed(exc, delay)
                self._wait(delay)
                continue
            self._stats.reconnects += 1
            self._metrics.broker_connected(self._component, reconnect=True)
            self._reconnects.reconnected(where)
            return

    def _wait(self, seconds: float) -> None:
        # No connection to service here: plain sleeps, short enough to notice stop().
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            self._metrics.alive(self._component)  # reconnecting, not stuck
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
