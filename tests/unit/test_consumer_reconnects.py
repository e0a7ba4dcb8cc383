"""The consumers' reconnect policy (consumer/reconnects.py), without a broker."""

from __future__ import annotations

import itertools
import logging

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.reconnects import MAX_EARLY_LOSSES, STABLE_SECONDS, Reconnects

# No jitter: each delay is exactly the backoff's.
BACKOFF = Backoff(initial=0.5, factor=2.0, cap=15.0, jitter=0.0)
_log = logging.getLogger("test.reconnects")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reconnects(clock: Clock) -> Reconnects:
    return Reconnects(BACKOFF, _log, component="consumer", queue="q", clock=clock)


def test_a_connection_that_lived_is_tried_again_at_once() -> None:
    clock = Clock()
    policy = reconnects(clock)
    policy.connected()
    clock.now += STABLE_SECONDS
    policy.lost("ConnectionResetError")
    assert policy.pause() == 0.0
    assert list(itertools.islice(policy.delays(), 3)) == [0.5, 1.0, 2.0]


def test_the_nth_early_loss_in_a_row_waits_the_nth_delay() -> None:
    clock = Clock()
    policy = reconnects(clock)
    pauses = []
    for _ in range(7):
        policy.connected()
        clock.now += 1.0  # dies young
        policy.lost("ConnectionResetError")
        pauses.append(policy.pause())
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    # a failed attempt after the pause waits the delay after it
    assert next(policy.delays()) == 15.0


def test_failed_attempts_after_the_pause_continue_the_backoff() -> None:
    clock = Clock()
    policy = reconnects(clock)
    for _ in range(2):
        policy.connected()
        policy.lost("ConnectionResetError")
    assert policy.pause() == 1.0
    assert list(itertools.islice(policy.delays(), 2)) == [2.0, 4.0]


def test_a_connection_that_lived_ends_the_run_of_early_losses() -> None:
    clock = Clock()
    policy = reconnects(clock)
    for _ in range(3):
        policy.connected()
        policy.lost("ConnectionResetError")
    assert policy.early_losses == 3
    policy.reconnected("amqp://h/")
    clock.now += STABLE_SECONDS + 1
    policy.lost("ConnectionResetError")
    assert policy.early_losses == 0
    assert policy.pause() == 0.0


def test_early_losses_count_up_to_the_cap_and_the_pause_stays_at_the_cap() -> None:
    clock = Clock()
    policy = reconnects(clock)
    for _ in range(MAX_EARLY_LOSSES + 5):
        policy.connected()
        policy.lost("ConnectionResetError")
    assert policy.early_losses == MAX_EARLY_LOSSES + 5
    assert policy.pause() == 15.0


def test_the_log_lines_name_their_events_and_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    policy = reconnects(clock)
    with caplog.at_level(logging.INFO, logger=_log.name):
        policy.connected()
        policy.lost("ConnectionResetError")
        policy.pause()
        policy.failed("ConnectionRefusedError", 1.0)
        policy.reconnected("amqp://guest:***@h:5672/")
    fields = [
        (
            getattr(r, "event", None),
            r.levelno,
            getattr(r, "delay", None),
            getattr(r, "component", None),
            getattr(r, "queue", None),
        )
        for r in caplog.records
    ]
    assert fields == [
        ("broker_lost", logging.WARNING, None, "consumer", "q"),
        ("reconnect_delayed", logging.INFO, 0.5, None, None),
        ("reconnect_failed", logging.WARNING, 1.0, None, None),
        ("broker_reconnected", logging.INFO, None, "consumer", None),
    ]
    assert "ConnectionResetError" in caplog.records[0].getMessage()


def test_no_pause_is_announced_when_there_is_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    policy = reconnects(clock)
    with caplog.at_level(logging.INFO, logger=_log.name):
        clock.now += STABLE_SECONDS
        policy.lost("ConnectionResetError")
        assert policy.pause() == 0.0
    assert [getattr(r, "event", None) for r in caplog.records] == ["broker_lost"]
