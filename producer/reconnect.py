"""Where and when the publisher connects again: URL rotation, backoff, deadline.

No I/O here: the transport's I/O thread reports each failed or lost connection
and asks which broker URL to try next and how long to wait first. The URLs are
tried in turn (a cluster's next node may be the one still up); after a whole
round has failed, the next round waits an exponentially growing, jittered
delay, until the connection has been down for ``reconnect_timeout``.
"""

from __future__ import annotations

import random
import time

from envelope_mq.producer.options import TransportOptions
from envelope_mq.shared.errors import BrokerUnavailableError

__all__ = ["Reconnect"]


class Reconnect:
    """The reconnection state of one transport (I/O thread only)."""

    def __init__(self, options: TransportOptions, urls: int, where: str) -> None:
        self._options = options
        self._urls = urls
        self._where = where  # redacted URLs, for error texts
        self._url_index = 0
        self._round_failures = 0
        self._attempt = 0
        self._down_since: float | None = None
        self._last_error: BaseException | None = None
        self.reconnects = 0

    def url(self) -> int:
        """The index of the broker URL to connect to next."""
        return self._url_index % self._urls

    def opened(self) -> None:
        """A connection opened: the next failure starts a new round of URLs."""
        self._round_failures = 0

    def ready(self, *, reconnected: bool) -> None:
        """A channel is ready to publish: the backoff starts over."""
        self._attempt = 0
        self._down_since = None
        if reconnected:
            self.reconnects += 1

    def open_failed(self, error: BaseException) -> bool:
        """Count a failed connection attempt; True if the round has a URL left."""
        self._last_error = error
        self._url_index += 1
        self._round_failures += 1
        if self._round_failures < self._urls:
            return True
        self._round_failures = 0
        return False

    def lost(self, error: BaseException) -> None:
        """An open connection was lost: move on to the next URL."""
        self._last_error = error
        self._url_index += 1
        if self._down_since is None:
            self._down_since = time.monotonic()

    def expired(self) -> BrokerUnavailableError | None:
        """The error to fail with once down for ``reconnect_timeout``, else None."""
        timeout = self._options.reconnect_timeout
        if self._down_since is None:
            self._down_since = time.monotonic()
        if timeout is not None and time.monotonic() - self._down_since >= timeout:
            return BrokerUnavailableError(
                f"RabbitMQ at {self._where} unreachable for {timeout:.0f} s: "
                f"{type(self._last_error).__name__}"
            )
        return None

    def backoff(self) -> float:
        """The delay before the next attempt, growing with each one."""
        self._attempt += 1
        return self.delay(self._attempt - 1)

    def delay(self, attempt: int) -> float:
        """A jittered delay for the ``attempt``-th retry (from 0)."""
        ceiling = min(
            self._options.max_backoff,
            self._options.initial_backoff * 2 ** min(attempt, 64),
        )
        # Jitter, so that many clients do not retry in step.
        return random.uniform(ceiling / 2, ceiling)
