"""How many times a message has been delivered, to bound handler retries.

Quorum queues count for us: from the second delivery on, the broker adds an
``x-delivery-count`` header (deliveries before this one). Classic queues do not,
so this consumer remembers, per message_id, how many deliveries of the message
its handler failed, in a bounded LRU map. The map is per process: a restart or
a second consumer on the same queue starts again from the broker's
``redelivered`` flag, which counts as at least a second delivery. A message is
therefore quarantined after at most ``max_deliveries`` failures seen by one
consumer, never retried forever. (The alternative — re-publishing each failed
message with an attempt header — would survive restarts but costs a confirmed
publish per failure and moves the message to the tail of the queue.)
"""

from __future__ import annotations

from collections import OrderedDict

from envelope_mq.consumer.message import Delivery

__all__ = ["DELIVERY_COUNT_HEADER", "DeliveryCounter"]

DELIVERY_COUNT_HEADER = "x-delivery-count"


class DeliveryCounter:
    """Failed deliveries by message_id, LRU-bounded to ``max_entries``."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._failures: OrderedDict[str, int] = OrderedDict()
        # Deliveries the handler sent back with Retry: not failures, so they
        # are taken off the broker's count (same LRU bound, same keys).
        self._retries: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def deliveries(self, delivery: Delivery) -> int:
        """This delivery's number, 1 for the first; the best evidence wins."""
        if not delivery.redelivered:
            return 1
        number = 2
        broker_count = delivery.headers.get(DELIVERY_COUNT_HEADER)
        # bool is an int too: a forged True must not count
        if type(broker_count) is int and broker_count + 1 > number:
            number = broker_count + 1
        if delivery.message_id is not None:
            number -= self._retries.get(delivery.message_id, 0)
            failed = self._failures.get(delivery.message_id, 0)
            if failed + 1 > number:
                number = failed + 1
        return number

    def failed(self, delivery: Delivery, deliveries: int) -> None:
        """Record that the handler failed the ``deliveries``-th delivery."""
        if delivery.message_id is None:
            return
        self._failures[delivery.message_id] = deliveries
        self._failures.move_to_end(delivery.message_id)
        while len(self._failures) > self._max_entries:
            self._failures.popitem(last=False)

    def retried(self, delivery: Delivery) -> None:
        """Record that the handler sent ``delivery`` back with Retry (no failure)."""
        if delivery.message_id is None:
            return
        self._retries[delivery.message_id] = (
            self._retries.get(delivery.message_id, 0) + 1
        )
        self._retries.move_to_end(delivery.message_id)
        while len(self._retries) > self._max_entries:
            self._retries.popitem(last=False)

    def settled(self, delivery: Delivery) -> None:
        """Forget a message that was acknowledged or quarantined."""
        if delivery.redelivered and delivery.message_id is not None:
            self._failures.pop(delivery.message_id, None)
            self._retries.pop(delivery.message_id, None)
