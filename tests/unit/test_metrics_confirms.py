"""The publisher's confirm bookkeeping feeds the metrics: acks, nacks, returns."""

from __future__ import annotations

from envelope_mq.producer.confirms import ConfirmTracker, Outgoing
from envelope_mq.producer.window import InFlightWindow
from envelope_mq.shared.errors import BrokerUnavailableError
from envelope_mq.shared.observability import Metrics


def counter(metrics: Metrics, kind: str) -> float:
    found = metrics.registry.get_sample_value(f"envelope_mq_messages_{kind}_total")
    assert found is not None
    return found


def tracked(count: int) -> tuple[ConfirmTracker, Metrics, list[Outgoing]]:
    metrics = Metrics(process_metrics=False)
    window = InFlightWindow(100)
    tracker = ConfirmTracker(window, metrics)
    outs = []
    for n in range(count):
        out = Outgoing(("ex", "rk", b"method"), b"header", b"body %d" % n, f"id-{n}")
        out.future.set_running_or_notify_cancel()
        window.acquire()
        tracker.record(out)
        outs.append(out)
    return tracker, metrics, outs


def test_acks_nacks_and_returns_are_counted_apart() -> None:
    tracker, metrics, outs = tracked(6)
    tracker.returned(outs[1].body)
    tracker.settle(3, multiple=True, acked=True)  # ids 0-2, of which 1 returned
    tracker.settle(5, multiple=True, acked=False)  # ids 3-4 nacked
    assert counter(metrics, "confirmed") == 2
    assert counter(metrics, "returned") == 1
    assert counter(metrics, "nacked") == 2
    assert counter(metrics, "publish_failed") == 0
    tracker.fail_unconfirmed(BrokerUnavailableError("gone"))  # id 5
    assert counter(metrics, "publish_failed") == 1


def test_a_resend_after_reconnect_counts_as_republished() -> None:
    tracker, metrics, _ = tracked(3)
    again = tracker.take_unconfirmed()
    tracker.new_channel()
    for out in again:
        tracker.record(out)
    assert counter(metrics, "republished") == 3
    tracker.settle(3, multiple=True, acked=True)
    assert counter(metrics, "confirmed") == 3
