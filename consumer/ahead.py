"""Unwrap the data keys of deliveries still waiting, while earlier ones are handled.

A replay reads a stream as fast as the broker sends it, and every data key
the unwrap cache has not seen stops the loop for one KMS Decrypt (tens of
milliseconds), one after the other. :class:`UnwrapAhead` looks at the
deliveries waiting in the prefetch window as they arrive and asks the unwrap
cache for each data key it has not asked for yet, on a few helper threads, so
that the Decrypt is done (or in flight: the cache is single-flight) when the
loop reaches the message. It never makes a call the loop would not make:

- the same cache, so one Decrypt per data key, and the Decrypt budget and
  negative caching apply as they do to the loop;
- only for messages the allowed-context and allowed-key policies would let
  reach KMS (``worth``), so a message that would be refused costs nothing;
- at most ``workers`` calls at once, and each data key asked for once while
  it is remembered (the last ``remember`` keys).

Its failures are dropped: the loop meets the same key again and decides.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from envelope_mq.consumer.message import Delivery
from envelope_mq.shared.envelope import EnvelopeHeader, EnvelopeOpener, KeyUnwrapper
from envelope_mq.shared.errors import DecryptionError, MessagingError

__all__ = ["DEFAULT_AHEAD_WORKERS", "UnwrapAhead"]

logger = logging.getLogger(__name__)

DEFAULT_AHEAD_WORKERS = 4
_REMEMBER = 4096


class UnwrapAhead:
    """Warms ``cache`` with the data keys of deliveries not yet handled."""

    def __init__(
        self,
        opener: EnvelopeOpener,
        cache: KeyUnwrapper,
        worth: Callable[[EnvelopeHeader], bool],
        *,
        workers: int = DEFAULT_AHEAD_WORKERS,
        remember: int = _REMEMBER,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._opener = opener
        self._cache = cache
        self._worth = worth
        self._workers = workers
        self._remember = remember
        self._asked: collections.OrderedDict[object, None] = collections.OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._examined = 0  # deliveries at the head of the window already seen
        self.requested = 0  # data keys asked for ahead, since made

    def look(self, pending: collections.deque[Delivery]) -> None:
        """Consider the deliveries that arrived in ``pending`` since the last look."""
        waiting = len(pending)
        if waiting < self._examined:  # the window was cleared (a reconnect)
            self._examined = 0
        if waiting == self._examined:
            return
        for delivery in itertools.islice(pending, self._examined, waiting):
            self._consider(delivery)
        self._examined = waiting

    def taken(self) -> None:
        """The loop took the delivery at the head of the window."""
        if self._examined:
            self._examined -= 1

    def close(self) -> None:
        """Stop the helper threads (calls in flight finish on their own)."""
        executor, self._executor = self._executor, None
        self._examined = 0
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _consider(self, delivery: Delivery) -> None:
        if delivery.defects:
            return
        try:
            header = self._opener.parse(delivery.headers)
        except DecryptionError:
            return  # malformed: the loop quarantines it, no KMS call
        key = (header.wrapped_key, _context_key(header.context))
        if key in self._asked or not self._worth(header):
            return
        self._asked[key] = None
        if len(self._asked) > self._remember:
            self._asked.popitem(last=False)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self._workers, thread_name_prefix="emq-unwrap-ahead"
            )
        self.requested += 1
        self._executor.submit(self._unwrap, header)

    def _unwrap(self, header: EnvelopeHeader) -> None:
        try:
            self._cache.unwrap_any(header.copies, header.context)
        except MessagingError as exc:  # the loop meets this key again and decides
            logger.debug("unwrap ahead failed: %s", type(exc).__name__)


def _context_key(context: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(context.items())) if context else ()
