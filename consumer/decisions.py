"""What a handler may raise to decide how its message ends.

Returning normally acknowledges the message; any other exception requeues it,
counted against ``max_deliveries`` (then it is quarantined as handler-error).
Two exceptions say more:

- :class:`Reject` — this message will never succeed (poison, invalid for the
  application): quarantine it now, with the reason, without retrying;
- :class:`Retry` — not now, through no fault of the message (a database down,
  a rate limit): requeue it without counting a failure, so it is never
  quarantined for it.

They are signals from the application, not errors of envelope-mq, so they do
not derive from ``MessagingError``. A requeued message comes back at once when
the queue holds nothing else: a handler that raises :class:`Retry` should first
wait a little for what it lacks (``time.sleep`` is fine: the handler runs
between deliveries, and the prefetched ones wait).
"""

from __future__ import annotations

__all__ = ["MAX_REASON_CHARS", "Reject", "Retry"]

# The reason goes into a header and a log line: bounded, like any header we write.
MAX_REASON_CHARS = 200


class Reject(Exception):  # noqa: N818  (a decision, not an error)
    """Quarantine the message now, as ``rejected``, with ``reason``.

    ``reason`` is stored in the quarantine copy's ``x-emq-quarantine-detail``
    header and logged, cut to 200 characters: say why, never quote the message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)[:MAX_REASON_CHARS]


class Retry(Exception):  # noqa: N818  (a decision, not an error)
    """Requeue the message without counting a failed delivery."""
