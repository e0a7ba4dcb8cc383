from __future__ import annotations

import pytest
from envelope_mq.producer.confirms import ConfirmTracker, Outgoing
from envelope_mq.producer.window import InFlightWindow
from envelope_mq.shared.errors import (
    BrokerUnavailableError,
    MessageNackedError,
    MessageUnroutableError,
)


def message(n: int) -> Outgoing:
    out = Outgoing(("ex", "rk", b"method"), b"header", b"body %d" % n, f"id-{n}")
    out.future.set_running_or_notify_cancel()
    return out


def tracker_with(count: int) -> tuple[ConfirmTracker, InFlightWindow, list[Outgoing]]:
    window = InFlightWindow(100)
    tracker = ConfirmTracker(window)
    outs = [message(n) for n in range(count)]
    for out in outs:
        window.acquire()
        tracker.record(out)
    return tracker, window, outs


def test_a_multiple_ack_resolves_every_tag_up_to_it_and_frees_their_slots() -> None:
    tracker, window, outs = tracker_with(5)
    tracker.settle(3, multiple=True, acked=True)
    assert [o.future.result(timeout=0) for o in outs[:3]] == ["id-0", "id-1", "id-2"]
    assert not outs[3].future.done()
    assert len(tracker) == 2
    assert window.count == 2


def test_a_single_ack_resolves_only_its_own_tag() -> None:
    tracker, _, outs = tracker_with(3)
    tracker.settle(2, multiple=False, acked=True)
    assert [o.future.done() for o in outs] == [False, True, False]


def test_a_nack_fails_with_the_message_id() -> None:
    tracker, _, outs = tracker_with(2)
    tracker.settle(2, multiple=True, acked=False)
    for out in outs:
        with pytest.raises(MessageNackedError) as caught:
            out.future.result(timeout=0)
        assert caught.value.message_id == out.message_id
    assert tracker.failed == 2


def test_a_returned_message_fails_as_unroutable_when_its_ack_arrives() -> None:
    tracker, _, outs = tracker_with(3)
    tracker.returned(b"body 1")
    tracker.settle(3, multiple=True, acked=True)
    assert outs[0].future.result(timeout=0) == "id-0"
    with pytest.raises(MessageUnroutableError, match="routing key 'rk'"):
        outs[1].future.result(timeout=0)
    assert outs[2].future.result(timeout=0) == "id-2"
    assert (tracker.confirmed, tracker.failed) == (2, 1)


def test_unconfirmed_messages_come_back_in_order_and_count_as_republished() -> None:
    tracker, window, outs = tracker_with(4)
    tracker.settle(1, multiple=False, acked=True)
    taken = tracker.take_unconfirmed()
    assert taken == outs[1:]
    assert window.count == 3  # still in flight: they will be published again
    tracker.new_channel()
    for out in taken:
        tracker.record(out)
    tracker.settle(3, multiple=True, acked=True)
    assert all(o.future.result(timeout=0) for o in outs)
    assert (tracker.published, tracker.republished) == (7, 3)
    assert window.count == 0


def test_failing_everything_gives_each_message_its_own_error() -> None:
    tracker, window, outs = tracker_with(2)
    assert tracker.fail_unconfirmed(BrokerUnavailableError("gone")) == 2
    errors = [o.future.exception(timeout=0) for o in outs]
    assert all(isinstance(e, BrokerUnavailableError) for e in errors)
    assert errors[0] is not errors[1]
    assert window.count == 0
