from __future__ import annotations

import threading

import pytest
from envelope_mq.producer.window import InFlightWindow


def test_acquire_fails_without_waiting_when_the_window_is_full() -> None:
    window = InFlightWindow(2)
    assert window.acquire(timeout=0)
    assert window.acquire(timeout=0)
    assert not window.acquire(timeout=0)
    assert window.count == 2


def test_a_release_lets_a_blocked_acquire_through() -> None:
    window = InFlightWindow(1)
    window.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: window.acquire() and got.set())
    waiter.start()
    window.release()
    waiter.join(timeout=30)
    assert got.is_set()
    assert window.count == 1


def test_wait_empty_returns_once_every_slot_is_released_in_batches() -> None:
    window = InFlightWindow(10)
    for _ in range(5):
        window.acquire()
    assert not window.wait_empty(timeout=0)
    releaser = threading.Thread(target=lambda: (window.release(3), window.release(2)))
    releaser.start()
    assert window.wait_empty(timeout=30)
    releaser.join()
    assert window.count == 0


def test_a_window_needs_room_for_one_message() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlightWindow(0)
