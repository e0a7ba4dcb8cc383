"""consumer.policy and consumer.deliveries: the consumer's two small bookkeepers."""

from __future__ import annotations

import pytest
from envelope_mq.consumer.deliveries import DeliveryCounter
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.errors import ConfigError


def delivery(
    message_id: str | None = "m-1",
    *,
    redelivered: bool = False,
    headers: dict[str, object] | None = None,
) -> Delivery:
    return Delivery(
        body=b"",
        headers=headers or {},
        message_id=message_id,
        timestamp=1,
        content_type=None,
        content_encoding=None,
        type=None,
        redelivered=redelivered,
        delivery_tag=1,
    )


def test_empty_policy_permits_every_context() -> None:
    policy = ContextPolicy.parse([])
    assert not policy
    assert policy.permits({})
    assert policy.permits({"tenant": "z"})


@pytest.mark.parametrize(
    ("context", "permitted"),
    [
        ({"tenant": "a"}, True),
        ({"tenant": "b", "region": "eu"}, True),
        ({"tenant": "c"}, False),
        ({}, False),
        ({"Tenant": "a"}, False),
    ],
)
def test_policy_requires_each_named_key_to_hold_an_allowed_value(
    context: dict[str, str], permitted: bool
) -> None:
    policy = ContextPolicy.parse(["tenant=a", "tenant=b"])
    assert policy.permits(context) is permitted


def test_policy_value_may_contain_equals_signs() -> None:
    assert ContextPolicy.parse(["k=v=w"]).permits({"k": "v=w"})


@pytest.mark.parametrize("pair", ["tenant", "=a", ""])
def test_policy_rejects_pairs_without_a_key(pair: str) -> None:
    with pytest.raises(ConfigError):
        ContextPolicy.parse([pair])


def test_first_delivery_is_number_one() -> None:
    assert DeliveryCounter().deliveries(delivery()) == 1


def test_redelivery_counts_at_least_two_with_no_other_evidence() -> None:
    assert DeliveryCounter().deliveries(delivery(redelivered=True)) == 2


def test_quorum_delivery_count_header_is_used() -> None:
    d = delivery(redelivered=True, headers={"x-delivery-count": 4})
    assert DeliveryCounter().deliveries(d) == 5


def test_forged_boolean_delivery_count_is_ignored() -> None:
    d = delivery(redelivered=True, headers={"x-delivery-count": True})
    assert DeliveryCounter().deliveries(d) == 2


def test_recorded_failures_count_for_classic_queues() -> None:
    counter = DeliveryCounter()
    first = delivery()
    counter.failed(first, 1)
    counter.failed(delivery(redelivered=True), 2)
    assert counter.deliveries(delivery(redelivered=True)) == 3


def test_settled_message_is_forgotten() -> None:
    counter = DeliveryCounter()
    counter.failed(delivery(), 1)
    counter.settled(delivery(redelivered=True))
    assert len(counter) == 0


def test_counter_is_bounded_and_forgets_the_oldest() -> None:
    counter = DeliveryCounter(max_entries=2)
    for mid in ("a", "b", "c"):
        counter.failed(delivery(mid), 3)
    assert len(counter) == 2
    assert counter.deliveries(delivery("a", redelivered=True)) == 2
    assert counter.deliveries(delivery("c", redelivered=True)) == 4


def test_retried_deliveries_do_not_count_against_the_limit() -> None:
    counter = DeliveryCounter()
    counter.retried(delivery())  # first delivery: the handler raised Retry
    assert counter.deliveries(delivery(redelivered=True)) == 1
    counter.retried(delivery(redelivered=True))
    counter.failed(delivery(redelivered=True), 1)  # then a real failure
    assert counter.deliveries(delivery(redelivered=True)) == 2


def test_retries_are_taken_off_the_quorum_delivery_count() -> None:
    counter = DeliveryCounter()
    for _ in range(3):
        counter.retried(delivery(redelivered=True))
    d = delivery(redelivered=True, headers={"x-delivery-count": 3})
    assert counter.deliveries(d) == 1
