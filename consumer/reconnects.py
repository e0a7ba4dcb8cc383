"""Reconnects: when a consuming connection is tried again, and what is said.

The policy the sync run loop (consumer/runloop.py) and the asyncio consumer
(envelope_mq.aio.consumer) share, so that they cannot drift apart: after a lost
connection the first attempt is at once, unless the connection died young (it
lived less than 10 s), in which case the n-th such loss in a row first waits
the n-th delay of the backoff, so that a broker that accepts connections and
drops them at once cannot make a hot reconnect loop; each failed attempt waits
the next delay. It decides and logs (on the owner's logger, with the same
events and fields for both); the waits are the owner's (a sleep in one, an
await in the other), as are the attempts and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from envelope_mq.consumer.backoff import Backoff

__all__ = ["MAX_EARLY_LOSSES", "STABLE_SECONDS", "Reconnects"]

# A connection that lived less than this before it was lost "died young".
STABLE_SECONDS = 10.0
# The n-th early loss in a row waits the n-th delay, n at most this.
MAX_EARLY_LOSSES = 32


class Reconnects:
    """The reconnect policy and log lines of one consumer.

    Call :meth:`connected` whenever a connection opens, :meth:`lost` when it
    goes, then wait :meth:`pause` and try, waiting each delay of
    :meth:`delays` after a failed attempt (:meth:`failed`) until one opens
    (:meth:`reconnected`).
    """

    def __init__(
        self,
        backoff: Backoff,
        log: logging.Logger,
        *,
        component: str,
        queue: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff
        self._log = log
        self._component = component
        self._queue = queue
        self._clock = clock
        self._connected_at = clock()
        self._early_losses = 0
        self._delays: Iterator[float] = backoff.delays()
        self._pause = 0.0

    @property
    def early_losses(self) -> int:
        """Connections in a row that died young (0 after one that lived)."""
        return self._early_losses

    def connected(self) -> None:
        """A connection opened: its age is counted from now."""
        self._connected_at = self._clock()

    def lost(self, cause: object) -> None:
        """The connection is lost: say so, and decide how long to wait first."""
        if self._clock() - self._connected_at < STABLE_SECONDS:
            self._early_losses += 1
        else:
            self._early_losses = 0
        self._log.warning(
            "lost the broker (%s); reconnecting",
            cause,
            extra={
                "event": "broker_lost",
                "component": self._component,
                "queue": self._queue,
            },
        )
        self._delays = self._backoff.delays()
        self._pause = 0.0
        # the n-th early loss in a row waits the n-th delay of the backoff
        for _ in range(min(self._early_losses, MAX_EARLY_LOSSES)):
            self._pause = next(self._delays)

    def pause(self) -> float:
        """Seconds to wait before the first attempt (0 unless it died young)."""
        if self._pause:
            self._log.info(
                "connection lost soon after connecting; waiting %.1fs",
                self._pause,
                extra={"event": "reconnect_delayed", "delay": round(self._pause, 3)},
            )
        return self._pause

    def delays(self) -> Iterator[float]:
        """The wait after each failed attempt: the backoff, after the pause's."""
        return self._delays

    def failed(self, cause: object, delay: float) -> None:
        """An attempt failed; the next comes after ``delay`` seconds."""
        self._log.warning(
            "reconnect failed (%s); retrying in %.1fs",
            cause,
            delay,
            extra={"event": "reconnect_failed", "delay": round(delay, 3)},
        )

    def reconnected(self, where: str) -> None:
        """An attempt opened a connection (to one of ``where``)."""
        self.connected()
        self._log.info(
            "reconnected to %s",
            where,
            extra={"event": "broker_reconnected", "component": self._component},
        )
