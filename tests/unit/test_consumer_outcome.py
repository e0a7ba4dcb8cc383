"""Every way a delivery can end in outcome.handle, with fakes for KMS."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from envelope_mq.consumer.decisions import MAX_REASON_CHARS, Reject, Retry
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import (
    ACK,
    DUPLICATE,
    REQUEUE,
    RETRY_LATER,
    Reason,
    Verdict,
    handle,
)
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared import wire_v2
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import (
    KmsCallerError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.kms import InMemoryKeyProvider
from fakes import ClaimingSource, OneKeySource, ProviderUnwrapper

KEY_ID = "key-1"
OPEN_POLICY = ContextPolicy()


class Recorder:
    """A handler that records what it got, failing while ``failures`` > 0."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[ReceivedMessage] = []

    def __call__(self, message: ReceivedMessage) -> None:
        self.received.append(message)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("handler failed")


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider([KEY_ID])


@pytest.fixture
def opener(provider: InMemoryKeyProvider) -> Opener:
    return Opener(ProviderUnwrapper(provider))


def seal(
    provider: InMemoryKeyProvider,
    plaintext: bytes = b"hello",
    *,
    context: Mapping[str, str] | None = None,
    message_id: str = "m-1",
    content_type: str | None = "text/plain",
) -> Delivery:
    sealer = Sealer(OneKeySource(provider), KEY_ID, context)
    meta = MessageMeta(message_id, 1_700_000_000, content_type)
    sealed = sealer.seal(plaintext, meta)
    return Delivery(
        body=sealed.body,
        headers=dict(sealed.headers),
        message_id=meta.message_id,
        timestamp=meta.timestamp,
        content_type=meta.content_type,
        content_encoding=meta.content_encoding,
        type=meta.type,
        redelivered=False,
        delivery_tag=1,
    )


def test_handled_message_is_acked_and_the_handler_sees_the_plaintext(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    handler = Recorder()
    delivery = seal(provider, b"payload", context={"tenant": "a"})

    outcome = handle(delivery, opener, handler, policy=OPEN_POLICY)

    assert outcome is ACK
    [message] = handler.received
    assert message.body == b"payload"
    assert message.context == {"tenant": "a"}
    assert message.message_id == "m-1"
    assert message.content_type == "text/plain"
    assert message.key_id == KEY_ID
    assert wire_v2.decode(message.headers["x-emq"]).copies[0].key_id == KEY_ID


def test_received_message_repr_hides_the_plaintext(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    handler = Recorder()
    handle(seal(provider, b"top-secret-words"), opener, handler, policy=OPEN_POLICY)
    assert "top-secret-words" not in repr(handler.received[0])


def test_flipped_body_bit_is_quarantined_as_undecryptable(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    handler = Recorder()
    delivery = seal(provider)
    body = bytearray(delivery.body)
    body[-1] ^= 0x01
    tampered = dataclasses.replace(delivery, body=bytes(body))

    outcome = handle(tampered, opener, handler, policy=OPEN_POLICY)

    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.UNDECRYPTABLE
    assert handler.received == []


def test_body_moved_under_another_messages_headers_is_undecryptable(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    first = seal(provider, b"one", message_id="m-1")
    second = seal(provider, b"two", message_id="m-2", context={"x": "y"})
    swapped = dataclasses.replace(first, headers=second.headers)

    outcome = handle(swapped, opener, Recorder(), policy=OPEN_POLICY)

    assert outcome.reason is Reason.UNDECRYPTABLE


def test_changed_bound_property_is_undecryptable(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    delivery = dataclasses.replace(seal(provider), content_type="application/json")
    outcome = handle(delivery, opener, Recorder(), policy=OPEN_POLICY)
    assert outcome.reason is Reason.UNDECRYPTABLE


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-emq-version": 2},
        {"x-emq-alg": "AES-128-CBC"},
        {"x-emq-context": "not json"},
        {"x-emq-data-key": "A" * 5000},
        {"x-emq-version": True},
    ],
    ids=["none", "version-2", "other-alg", "bad-context", "oversize", "bool-version"],
)
def test_malformed_envelope_headers_are_quarantined_before_any_kms_call(
    provider: InMemoryKeyProvider, opener: Opener, headers: dict[str, object]
) -> None:
    delivery = seal(provider)
    broken = {**delivery.headers, **headers} if headers else {}
    outcome = handle(
        dataclasses.replace(delivery, headers=broken),
        opener,
        Recorder(),
        policy=OPEN_POLICY,
    )
    assert outcome.reason is Reason.MALFORMED
    assert provider.decrypt_calls == 0


@pytest.mark.parametrize("field", ["message_id", "timestamp"])
def test_missing_bound_property_is_malformed(
    provider: InMemoryKeyProvider, opener: Opener, field: str
) -> None:
    delivery = dataclasses.replace(seal(provider), **{field: None})
    outcome = handle(delivery, opener, Recorder(), policy=OPEN_POLICY)
    assert outcome.reason is Reason.MALFORMED
    assert provider.decrypt_calls == 0


def test_a_content_header_with_defects_is_malformed_even_if_it_would_open(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    delivery = dataclasses.replace(
        seal(provider), defects=("headers['x']: unknown field type 'Z'",)
    )
    handler = Recorder()
    outcome = handle(delivery, opener, handler, policy=OPEN_POLICY)
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.MALFORMED
    assert handler.received == []
    assert provider.decrypt_calls == 0


def test_context_outside_the_policy_is_denied_before_any_kms_call(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    handler = Recorder()
    policy = ContextPolicy.parse(["tenant=a"])

    outcome = handle(
        seal(provider, context={"tenant": "b"}), opener, handler, policy=policy
    )

    assert outcome.reason is Reason.CONTEXT_DENIED
    assert provider.decrypt_calls == 0
    assert handler.received == []


def test_context_inside_the_policy_is_handled(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    policy = ContextPolicy.parse(["tenant=a", "tenant=b"])
    delivery = seal(provider, context={"tenant": "b", "env": "prod"})
    assert handle(delivery, opener, Recorder(), policy=policy) is ACK


def test_kms_outage_holds_the_message_and_never_calls_the_handler(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    handler = Recorder()
    delivery = seal(provider)
    provider.fail_with(KmsUnavailableError("down", code="SDK.ServerUnreachable"))

    assert handle(delivery, opener, handler, policy=OPEN_POLICY) is RETRY_LATER

    provider.recover()
    assert handle(delivery, opener, handler, policy=OPEN_POLICY) is ACK
    assert len(handler.received) == 1


def test_kms_refusal_is_quarantined_with_its_code(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    delivery = seal(provider)
    provider.fail_with(
        KmsRequestError("denied", code="Forbidden.NoPermission", http_status=403)
    )

    outcome = handle(delivery, opener, Recorder(), policy=OPEN_POLICY)

    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.KMS_REJECTED
    assert outcome.kms_code == "Forbidden.NoPermission"


def test_wrapped_key_of_an_unknown_master_key_is_kms_rejected(
    opener: Opener,
) -> None:
    foreign = InMemoryKeyProvider([KEY_ID])  # same name, other key material
    outcome = handle(seal(foreign), opener, Recorder(), policy=OPEN_POLICY)
    assert outcome.reason is Reason.KMS_REJECTED


@pytest.mark.parametrize(("deliveries", "expected"), [(1, REQUEUE), (2, REQUEUE)])
def test_failing_handler_is_requeued_below_the_delivery_limit(
    provider: InMemoryKeyProvider,
    opener: Opener,
    deliveries: int,
    expected: object,
) -> None:
    outcome = handle(
        seal(provider),
        opener,
        Recorder(failures=1),
        policy=OPEN_POLICY,
        deliveries=deliveries,
        max_deliveries=3,
    )
    assert outcome is expected


def test_failing_handler_is_quarantined_on_the_last_allowed_delivery(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    outcome = handle(
        seal(provider),
        opener,
        Recorder(failures=1),
        policy=OPEN_POLICY,
        deliveries=3,
        max_deliveries=3,
    )
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.HANDLER_ERROR


def test_handler_failure_log_names_the_error_type_but_not_its_text(
    provider: InMemoryKeyProvider,
    opener: Opener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def leaky(message: ReceivedMessage) -> None:
        raise ValueError(message.body.decode())

    with caplog.at_level("DEBUG"):
        handle(seal(provider, b"secret-plaintext"), opener, leaky, policy=OPEN_POLICY)

    assert "ValueError" in caplog.text
    assert "secret-plaintext" not in caplog.text


def sealed_by(source: ClaimingSource, context: Mapping[str, str]) -> Delivery:
    sealer = Sealer(source, source.claimed, context)
    meta = MessageMeta("m-spoof", 1_700_000_000, "text/plain")
    sealed = sealer.seal(b"I am B", meta)
    return Delivery(
        body=sealed.body,
        headers=dict(sealed.headers),
        message_id=meta.message_id,
        timestamp=meta.timestamp,
        content_type=meta.content_type,
        content_encoding=None,
        type=None,
        redelivered=False,
        delivery_tag=1,
    )


def test_a_header_naming_another_key_than_kms_used_is_a_key_mismatch() -> None:
    provider = InMemoryKeyProvider(["key-a", "key-b"])
    spoof = sealed_by(ClaimingSource(provider, "key-a", "key-b"), {"tenant": "b"})
    handler = Recorder()
    outcome = handle(
        spoof,
        Opener(ProviderUnwrapper(provider)),
        handler,
        policy=ContextPolicy.parse(["tenant=b"]),
    )
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.KEY_MISMATCH
    assert handler.received == []


def test_the_handler_sees_the_key_id_kms_reported_not_the_headers_spelling() -> None:
    provider = InMemoryKeyProvider(["key-a"])
    arn = "acs:kms:cn-hangzhou:123456:key/key-a"
    delivery = sealed_by(ClaimingSource(provider, "key-a", arn), {})
    handler = Recorder()
    outcome = handle(
        delivery, Opener(ProviderUnwrapper(provider)), handler, policy=OPEN_POLICY
    )
    assert outcome is ACK
    [message] = handler.received
    assert wire_v2.decode(message.headers["x-emq"]).copies[0].key_id == arn
    assert message.key_id == "key-a"


def test_a_handler_that_raises_reject_quarantines_at_once_with_its_reason(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    def poison(message: ReceivedMessage) -> None:
        raise Reject("order 42 refers to no customer")

    outcome = handle(
        seal(provider), opener, poison, policy=OPEN_POLICY, max_deliveries=5
    )
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is Reason.REJECTED
    assert outcome.detail == "order 42 refers to no customer"


def test_a_reject_reason_is_bounded() -> None:
    assert len(Reject("x" * 10_000).reason) == MAX_REASON_CHARS


def test_a_handler_that_raises_retry_is_requeued_uncounted_even_on_the_last_delivery(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    def later(message: ReceivedMessage) -> None:
        raise Retry

    outcome = handle(
        seal(provider),
        opener,
        later,
        policy=OPEN_POLICY,
        deliveries=3,
        max_deliveries=3,
    )
    assert outcome.verdict is Verdict.RETRY


def test_a_duplicate_has_a_verdict_of_its_own() -> None:
    assert DUPLICATE.verdict is Verdict.DUPLICATE
    assert DUPLICATE.verdict is not ACK.verdict


def _policy(provider: InMemoryKeyProvider, *specs: str) -> KeyPolicy:
    return KeyPolicy.parse(specs).resolve(provider)


def test_only_the_key_allowed_for_a_tenant_may_speak_for_it() -> None:
    provider = InMemoryKeyProvider(["key-a", "key-b"])
    policy = _policy(provider, "key-a@tenant=a", "key-b@tenant=b")
    opener = Opener(ProviderUnwrapper(provider))
    honest = sealed_by(ClaimingSource(provider, "key-a", "key-a"), {"tenant": "b"})
    handler = Recorder()
    outcome = handle(honest, opener, handler, policy=OPEN_POLICY, key_policy=policy)
    assert outcome.reason is Reason.CONTEXT_DENIED
    assert provider.decrypt_calls == 0  # refused on the claim, before KMS
    spoof = sealed_by(ClaimingSource(provider, "key-a", "key-b"), {"tenant": "b"})
    outcome = handle(spoof, opener, handler, policy=OPEN_POLICY, key_policy=policy)
    assert outcome.reason is Reason.KEY_MISMATCH
    real = sealed_by(ClaimingSource(provider, "key-b", "key-b"), {"tenant": "b"})
    assert handle(real, opener, handler, policy=OPEN_POLICY, key_policy=policy) is ACK
    assert [m.key_id for m in handler.received] == ["key-b"]


def test_a_key_the_policy_omits_is_denied_before_any_kms_call() -> None:
    provider = InMemoryKeyProvider(["key-a", "key-b"])
    delivery = sealed_by(ClaimingSource(provider, "key-a", "key-a"), {})
    outcome = handle(
        delivery,
        Opener(ProviderUnwrapper(provider)),
        Recorder(),
        policy=OPEN_POLICY,
        key_policy=_policy(provider, "key-b"),
    )
    assert outcome.reason is Reason.KEY_DENIED
    assert provider.decrypt_calls == 0


@pytest.mark.parametrize("code", ["InvalidAccessKeySecret", "InvalidTimeStamp.Expired"])
def test_kms_refusing_the_consumer_itself_halts_and_quarantines_nothing(
    provider: InMemoryKeyProvider, opener: Opener, code: str
) -> None:
    delivery = seal(provider)
    provider.fail_with(KmsCallerError("refused", code=code, cause="the cause"))
    handler = Recorder()
    outcome = handle(delivery, opener, handler, policy=OPEN_POLICY)
    assert outcome.verdict is Verdict.HALT
    assert (outcome.kms_code, outcome.cause) == (code, "the cause")
    assert handler.received == []


@pytest.mark.parametrize(("listed", "verdict"), [(True, Verdict.HALT), (False, None)])
def test_a_permission_refusal_halts_only_for_a_key_the_policy_lists(
    provider: InMemoryKeyProvider, opener: Opener, listed: bool, verdict: Verdict
) -> None:
    delivery = seal(provider)  # under KEY_ID
    provider.fail_with(
        KmsRequestError("refused", code="Forbidden.NoPermission", http_status=403)
    )
    other = InMemoryKeyProvider([KEY_ID, "other"])
    key_policy = _policy(other, KEY_ID if listed else "other")
    outcome = handle(
        delivery, opener, Recorder(), policy=OPEN_POLICY, key_policy=key_policy
    )
    if listed:
        assert outcome.verdict is Verdict.HALT
        assert outcome.kms_code == "Forbidden.NoPermission"
    else:  # denied on the claim before KMS, never a halt
        assert outcome.reason is Reason.KEY_DENIED


def test_without_a_key_policy_a_permission_refusal_is_quarantined(
    provider: InMemoryKeyProvider, opener: Opener
) -> None:
    delivery = seal(provider)
    provider.fail_with(KmsRequestError("refused", code="Forbidden.NoPermission"))
    outcome = handle(delivery, opener, Recorder(), policy=OPEN_POLICY)
    assert outcome.reason is Reason.KMS_REJECTED


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("Rejected.Disabled", Reason.KEY_DISABLED),
        ("Rejected.PendingDeletion", Reason.KEY_PENDING_DELETION),
        ("Rejetced.PendingDeletion", Reason.KEY_PENDING_DELETION),  # older docs
        ("Forbidden.KeyNotFound", Reason.KMS_REJECTED),  # or another account's key
    ],
)
def test_a_master_key_that_kms_will_not_use_says_so(
    provider: InMemoryKeyProvider, opener: Opener, code: str, reason: Reason
) -> None:
    delivery = seal(provider)
    provider.fail_with(KmsRequestError("refused", code=code, http_status=409))
    outcome = handle(delivery, opener, Recorder(), policy=OPEN_POLICY)
    assert outcome.verdict is Verdict.QUARANTINE
    assert outcome.reason is reason
    assert outcome.kms_code == code
