"""Channel retirement: after a nack, replace the publishing channel, then probe.

A ``basic.nack`` retires the channel: nothing more is published on it, it is
closed once the confirms of what it already carries are in (or after the
transport's retire timeout, those then being published again as after a
connection loss), and a new channel is opened after a backoff that grows while
channels keep nacking. A channel can stay bad for as long as it lives: on
RabbitMQ 3.10 a channel whose first publish to a quorum queue comes while the
queue's recorded leader is down nacks every later publish to it (the broker's
``rabbit_fifo_client`` keeps asking the dead node), where a new channel works
once a leader is elected. The first message on a replacement channel is a
probe, and the rest wait for its confirm: a broker that nacks everything costs
one message per backoff period, not the whole backlog.

No I/O here: this is the state the transport's I/O thread consults.
"""

from __future__ import annotations

__all__ = ["ChannelRetirement"]


class ChannelRetirement:
    """Whether the current channel is retired or on probation (I/O thread only)."""

    def __init__(self) -> None:
        self.retiring = False  # the channel nacked: publish nothing more on it
        self.probing = False  # a replacement channel: one message until acked
        self.nack_streak = 0  # channels retired since the broker last acked
        self.replaced = 0

    def ready(self) -> None:
        """A new channel is ready; after a nack, it starts with a probe."""
        self.retiring = False
        self.probing = self.nack_streak > 0

    def nacked(self) -> bool:
        """The broker nacked; True if that retires the channel (not yet retired)."""
        if self.retiring:
            return False
        self.retiring = True
        self.nack_streak += 1
        return True

    def acked(self) -> bool:
        """The broker acked; True if that passes the probe: the rest may follow."""
        if self.probing and not self.retiring:
            self.probing = False
            self.nack_streak = 0
            return True
        return False

    def closed(self) -> bool:
        """The channel closed; True if it was the retired one."""
        retired, self.retiring = self.retiring, False
        return retired

    def replacing(self) -> int:
        """Count a replacement; the backoff attempt for opening the next channel."""
        self.replaced += 1
        return self.nack_streak - 1
