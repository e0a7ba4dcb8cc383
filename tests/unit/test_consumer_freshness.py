"""Replay protection: max_age refuses stale messages, the window drops repeats."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from envelope_mq.consumer.freshness import Admission, ReplayGuard
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import (
    ACK,
    DUPLICATE,
    REQUEUE,
    Outcome,
    Reason,
    Verdict,
    handle,
)
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.kms import InMemoryKeyProvider
from fakes import Clock, FreshKeySource, ProviderUnwrapper

KEY_ID = "key-1"
SENT_AT = 1_700_000_000


def sealed(provider: InMemoryKeyProvider, message_id: str = "m-1") -> Delivery:
    meta = MessageMeta(message_id, SENT_AT, "text/plain")
    message = Sealer(FreshKeySource(provider), KEY_ID).seal(b"payload", meta)
    return Delivery(
        body=message.body,
        headers=dict(message.headers),
        message_id=message_id,
        timestamp=SENT_AT,
        content_type="text/plain",
        content_encoding=None,
        type=None,
        redelivered=False,
        delivery_tag=1,
    )


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider([KEY_ID])


def run(
    delivery: Delivery, provider: InMemoryKeyProvider, guard: ReplayGuard
) -> tuple[Outcome, list[ReceivedMessage]]:
    received: list[ReceivedMessage] = []
    outcome = handle(
        delivery,
        Opener(ProviderUnwrapper(provider)),
        received.append,
        policy=ContextPolicy(),
        guard=guard,
    )
    return outcome, received


def test_a_message_older_than_max_age_is_quarantined_as_expired(
    provider: InMemoryKeyProvider,
) -> None:
    guard = ReplayGuard(max_age=60, clock=Clock(SENT_AT + 61))
    outcome, received = run(sealed(provider), provider, guard)
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.EXPIRED
    assert received == []


def test_a_message_within_max_age_is_handled(provider: InMemoryKeyProvider) -> None:
    guard = ReplayGuard(max_age=60, clock=Clock(SENT_AT + 60))
    outcome, received = run(sealed(provider), provider, guard)
    assert outcome is ACK
    assert [m.message_id for m in received] == ["m-1"]


def test_a_forged_fresh_timestamp_fails_authentication_before_the_age_check(
    provider: InMemoryKeyProvider,
) -> None:
    guard = ReplayGuard(max_age=60, clock=Clock(SENT_AT + 3600))
    replayed = dataclasses.replace(sealed(provider), timestamp=SENT_AT + 3600)
    outcome, received = run(replayed, provider, guard)
    assert outcome.reason is Reason.UNDECRYPTABLE
    assert received == []


def test_a_repeat_within_the_window_is_dropped_without_the_handler(
    provider: InMemoryKeyProvider,
) -> None:
    guard = ReplayGuard(dedup_window=10)
    delivery = sealed(provider)
    first, _ = run(delivery, provider, guard)
    again, received = run(
        dataclasses.replace(delivery, redelivered=True), provider, guard
    )
    assert first is ACK
    assert again is DUPLICATE
    assert again.verdict is Verdict.DUPLICATE  # acknowledged, counted apart
    assert received == []


def test_a_failed_handling_is_not_remembered(provider: InMemoryKeyProvider) -> None:
    guard = ReplayGuard(dedup_window=10)
    delivery = sealed(provider)

    def failing(_: ReceivedMessage) -> None:
        raise RuntimeError("not now")

    outcome = handle(
        delivery,
        Opener(ProviderUnwrapper(provider)),
        failing,
        policy=ContextPolicy(),
        guard=guard,
    )
    assert outcome is REQUEUE
    assert guard.admit(KEY_ID, {}, "m-1", SENT_AT) is Admission.FRESH


def test_the_window_is_bounded_and_forgets_the_oldest() -> None:
    guard = ReplayGuard(dedup_window=2)
    for message_id in ("a", "b", "c"):
        guard.handled(KEY_ID, {}, message_id)
    assert guard.admit(KEY_ID, {}, "a", SENT_AT) is Admission.FRESH
    assert guard.admit(KEY_ID, {}, "b", SENT_AT) is Admission.DUPLICATE
    assert guard.admit(KEY_ID, {}, "c", SENT_AT) is Admission.DUPLICATE


def test_the_guard_is_off_by_default() -> None:
    guard = ReplayGuard()
    guard.handled(KEY_ID, {}, "a")
    assert not guard.enabled
    assert guard.admit(KEY_ID, {}, "a", 0) is Admission.FRESH


@pytest.mark.parametrize(
    "kwargs", [{"max_age": 0}, {"max_age": -1}, {"dedup_window": -1}]
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"max_age|dedup_window"):
        ReplayGuard(**kwargs)  # type: ignore[arg-type]


def test_another_senders_message_with_the_same_id_is_not_a_duplicate() -> None:
    # Issue 11: keyed by the bare message_id, a message from key B (or for
    # another context) with an id key A used was acknowledged unhandled.
    provider = InMemoryKeyProvider(["key-a", "key-b"])
    guard = ReplayGuard(dedup_window=10)

    def under(key_id: str, context: Mapping[str, str] | None = None) -> Delivery:
        meta = MessageMeta("m-1", SENT_AT, "text/plain")
        message = Sealer(FreshKeySource(provider), key_id, context).seal(
            b"payload", meta
        )
        return Delivery(
            body=message.body,
            headers=dict(message.headers),
            message_id="m-1",
            timestamp=SENT_AT,
            content_type="text/plain",
            content_encoding=None,
            type=None,
            redelivered=False,
            delivery_tag=1,
        )

    assert run(under("key-a"), provider, guard)[0] is ACK
    outcome, received = run(under("key-b"), provider, guard)
    assert outcome is ACK
    assert [m.key_id for m in received] == ["key-b"]
    outcome, received = run(under("key-a", {"tenant": "b"}), provider, guard)
    assert outcome is ACK
    assert run(under("key-a"), provider, guard)[0] is DUPLICATE


@pytest.mark.parametrize(
    ("ahead", "expected"),
    [(0, Admission.FRESH), (60, Admission.FRESH), (61, Admission.EXPIRED)],
)
def test_max_age_refuses_a_timestamp_more_than_max_skew_ahead(
    ahead: int, expected: Admission
) -> None:
    guard = ReplayGuard(max_age=300, max_skew=60, clock=Clock(SENT_AT))
    assert guard.admit(KEY_ID, {}, "m", SENT_AT + ahead) is expected


def test_the_default_skew_is_a_minute() -> None:
    guard = ReplayGuard(max_age=3600, clock=Clock(SENT_AT))
    assert guard.max_skew == 60
    assert guard.admit(KEY_ID, {}, "m", SENT_AT + 10**9) is Admission.EXPIRED
