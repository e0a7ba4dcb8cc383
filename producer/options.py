"""The publisher transport's settings and counters, as plain values."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TransportOptions", "TransportStats"]


@dataclass(frozen=True)
class TransportOptions:
    """Flow control and reconnection settings of the publisher."""

    max_in_flight: int = 10_000  # publish() blocks while this many are unconfirmed
    connect_timeout: float = 30.0  # for the first connection, in start()
    reconnect_timeout: float | None = 300.0  # then pending messages fail
    initial_backoff: float = 0.1
    max_backoff: float = 10.0
    # Write pre-built frames straight into pika's output buffer when the pika
    # in use has the private hook for it (connection._adapter_emit_data);
    # False, or a pika without the hook: pika's public Channel.basic_publish.
    write_frames: bool = True


@dataclass(frozen=True)
class TransportStats:
    """Counters since the transport started."""

    published: int  # basic.publish calls, re-publications included
    confirmed: int
    failed: int
    republished: int
    reconnects: int  # channels re-opened after a refusal or a nack included
    replaced_channels: int = 0  # retired because the broker nacked a publish
