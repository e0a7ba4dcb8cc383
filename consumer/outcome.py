"""What becomes of one delivery: the consumer's decision, with no broker in sight.

:func:`handle` opens a delivery and runs the handler, then says how the delivery
ends as an :class:`Outcome`; the transport applies it to the broker. Keeping the
decision pure (collaborators passed in, no pika) lets every branch be tested
with fakes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from envelope_mq.consumer.decisions import Reject, Retry
from envelope_mq.consumer.freshness import Admission, ReplayGuard
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared import wire_v2
from envelope_mq.shared.envelope import (
    EnvelopeOpener,
    MessageMeta,
)
from envelope_mq.shared.errors import (
    DecryptionError,
    KeyMismatchError,
    KmsCallerError,
    KmsRequestError,
    KmsUnavailableError,
    MalformedMessageError,
)
from envelope_mq.shared.kms import is_permission_refusal
from envelope_mq.shared.kms.failures import key_state_refusal

__all__ = [
    "ACK",
    "DUPLICATE",
    "REQUEUE",
    "RETRY",
    "RETRY_LATER",
    "EnvelopeOpener",
    "Handler",
    "Outcome",
    "Reason",
    "Verdict",
    "admit",
    "after_handler",
    "handle",
]

logger = logging.getLogger(__name__)

Handler = Callable[[ReceivedMessage], object]


class Verdict(enum.Enum):
    """How a delivery ends."""

    ACK = "ack"  # handled: acknowledge
    DUPLICATE = "duplicate"  # handled before (replay protection): acknowledge
    REQUEUE = "requeue"  # the handler failed: deliver it again, counted
    RETRY = "retry"  # the handler raised Retry: deliver it again, not counted
    QUARANTINE = "quarantine"  # move it to <queue>.quarantine, then acknowledge
    RETRY_LATER = "retry-later"  # KMS is down: hold it unacknowledged, retry
    # KMS refuses the consumer itself (credentials, clock, RAM policy for a key
    # it is meant to read): stop consuming, leave every message in the queue.
    HALT = "halt"


class Reason(enum.StrEnum):
    """Why a message was quarantined (the x-emq-quarantine-reason header)."""

    # refused before any KMS call: envelope headers, body size or properties
    MALFORMED = "malformed"
    # unwrapped, then authentication failed (tampered or wrong key), or the
    # data key KMS returned is not 32 bytes
    UNDECRYPTABLE = "undecryptable"
    CONTEXT_DENIED = "context-denied"  # outside the allowed-context policy
    KMS_REJECTED = "kms-rejected"  # KMS refused to unwrap the data key
    HANDLER_ERROR = "handler-error"  # the handler failed max_deliveries times
    REJECTED = "rejected"  # the handler raised Reject(reason)
    EXPIRED = "expired"  # older than max_age (replay protection, freshness.py)
    KEY_MISMATCH = "key-mismatch"  # x-emq-key-id is not the key KMS unwrapped with
    KEY_DENIED = "key-denied"  # under a master key the allowed-key policy omits
    # KMS will not use the master key at all (crypto-shredding, docs/streams.md):
    KEY_DISABLED = "key-disabled"  # DisableKey; EnableKey brings it back
    KEY_PENDING_DELETION = "key-pending-deletion"  # CancelKeyDeletion brings it back


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one delivery, with the quarantine reason when there is one."""

    verdict: Verdict
    reason: Reason | None = None
    kms_code: str = ""  # the KMS error Code behind kms-rejected; never key material
    detail: str = ""  # the handler's Reject reason behind rejected
    cause: str = ""  # HALT: the likely cause, in an operator's words


# Shared instances: the hot path allocates no outcome.
ACK = Outcome(Verdict.ACK)
REQUEUE = Outcome(Verdict.REQUEUE)
RETRY = Outcome(Verdict.RETRY)
RETRY_LATER = Outcome(Verdict.RETRY_LATER)
# Replay protection (freshness.py): handled already within the de-duplication
# window, so acknowledged without calling the handler.
DUPLICATE = Outcome(Verdict.DUPLICATE)
_EXPIRED = Outcome(Verdict.QUARANTINE, Reason.EXPIRED)
_MALFORMED = Outcome(Verdict.QUARANTINE, Reason.MALFORMED)
_UNDECRYPTABLE = Outcome(Verdict.QUARANTINE, Reason.UNDECRYPTABLE)
_KEY_MISMATCH = Outcome(Verdict.QUARANTINE, Reason.KEY_MISMATCH)
_CONTEXT_DENIED = Outcome(Verdict.QUARANTINE, Reason.CONTEXT_DENIED)
_KEY_DENIED = Outcome(Verdict.QUARANTINE, Reason.KEY_DENIED)
_HANDLER_ERROR = Outcome(Verdict.QUARANTINE, Reason.HANDLER_ERROR)
_KEY_STATE_REASONS = {
    "disabled": Reason.KEY_DISABLED,
    "pending-deletion": Reason.KEY_PENDING_DELETION,
}


def handle(
    delivery: Delivery,
    opener: EnvelopeOpener,
    handler: Handler,
    *,
    policy: ContextPolicy,
    key_policy: KeyPolicy | None = None,
    deliveries: int = 1,
    max_deliveries: int = 5,
    guard: ReplayGuard | None = None,
) -> Outcome:
    """Open ``delivery``, run ``handler`` on it, and decide how it ends.

    ``deliveries`` is this delivery's number (1 for the first); a handler that
    fails on delivery ``max_deliveries`` gets its message quarantined.
    ``guard`` (replay protection) may refuse an opened message as expired or
    drop it as a duplicate before the handler sees it. ``key_policy`` (a
    resolved :class:`KeyPolicy`) says which master keys may send, and what.
    """
    admitted = admit(
        delivery, opener, policy=policy, key_policy=key_policy, guard=guard
    )
    if isinstance(admitted, Outcome):
        return admitted
    try:
        handler(admitted)
    except Exception as exc:  # the one boundary around user code
        return after_handler(
            admitted, exc, deliveries=deliveries, max_deliveries=max_deliveries
        )
    return after_handler(admitted, None, guard=guard)


def admit(
    delivery: Delivery,
    opener: EnvelopeOpener,
    *,
    policy: ContextPolicy,
    key_policy: KeyPolicy | None = None,
    guard: ReplayGuard | None = None,
) -> ReceivedMessage | Outcome:
    """The first half of :func:`handle`: the message for the handler, or its end.

    For callers that run the handler themselves (the asyncio consumer awaits
    it); they then ask :func:`after_handler` how the delivery ends.
    """
    if delivery.defects:  # the content header itself could not be decoded
        return _MALFORMED
    try:
        header = opener.parse(delivery.headers)
    except DecryptionError:
        return _MALFORMED
    message_id = delivery.message_id
    timestamp = delivery.timestamp
    # message_id and timestamp are bound into the tag: without them nothing
    # opens. An empty message_id is refused too: it identifies nothing (the
    # writer refuses it as well).
    if type(message_id) is not str or not message_id or type(timestamp) is not int:
        return _MALFORMED
    try:  # parse() refused x-emq-cause on v1 already
        causation_id = wire_v2.read_cause(delivery.headers)
    except ValueError:
        return _MALFORMED
    if policy and not policy.permits(header.context):
        return _CONTEXT_DENIED
    # On the header's claim first: what could only be refused costs no Decrypt.
    # Any copy may be the one the unwrapper uses (another region's key).
    if key_policy:
        claims = [copy.key_id for copy in header.copies]
        if not any(key_policy.lists(claim) for claim in claims):
            return _KEY_DENIED
        if not any(key_policy.permits(claim, header.context) for claim in claims):
            return _CONTEXT_DENIED
    meta = MessageMeta(
        message_id,
        timestamp,
        delivery.content_type,
        delivery.content_encoding,
        delivery.type,
        causation_id,
    )
    try:
        opened = opener.open(delivery.body, header, meta)
    except KeyMismatchError as exc:
        logger.warning(
            "message %s names master key %s but KMS unwrapped it with %s: "
            "a spoofed sender",
            message_id,
            exc.claimed,
            exc.verified,
            extra={"event": "key_mismatch", "message_id": message_id},
        )
        return _KEY_MISMATCH
    except MalformedMessageError:  # the body's size, a bound property: no KMS call
        return _MALFORMED
    except DecryptionError:
        return _UNDECRYPTABLE
    except KmsUnavailableError:
        return RETRY_LATER
    except KmsCallerError as exc:  # no message's fault: stop, lose nothing
        return Outcome(Verdict.HALT, kms_code=exc.code, cause=exc.cause)
    except KmsRequestError as exc:
        # Refused for a key this consumer is meant to read: its own RAM policy
        # is wrong. For any other key the message is the odd one out, so no
        # publisher can halt a consumer by wrapping under a foreign key.
        if key_policy and is_permission_refusal(exc.code):
            return Outcome(
                Verdict.HALT,
                kms_code=exc.code,
                cause=f"this consumer may not Decrypt under {header.key_id}, "
                "a key its --allow-key policy lists (RAM policy)",
            )
        state = key_state_refusal(exc.code)
        if state is not None:
            return Outcome(Verdict.QUARANTINE, _KEY_STATE_REASONS[state], exc.code)
        return Outcome(Verdict.QUARANTINE, Reason.KMS_REJECTED, exc.code)
    # What counts is the key KMS reported, not the header's claim.
    if key_policy and not key_policy.permits(opened.key_id, opened.context):
        return _KEY_DENIED
    # Replay protection, on the now authenticated message_id and timestamp.
    if guard is not None:
        admission = guard.admit(opened.key_id, opened.context, message_id, timestamp)
        if admission is Admission.EXPIRED:
            return _EXPIRED
        if admission is Admission.DUPLICATE:
            return DUPLICATE
    return ReceivedMessage(
        opened.plaintext,
        meta,
        delivery.headers,
        opened.context,
        opened.key_id,
        delivery.redelivered,
    )


def after_handler(
    message: ReceivedMessage,
    error: Exception | None,
    *,
    deliveries: int = 1,
    max_deliveries: int = 5,
    guard: ReplayGuard | None = None,
) -> Outcome:
    """The second half of :func:`handle`: how a delivery ends once its handler ran.

    ``error`` is what the handler raised (Reject and Retry included), None
    when it returned.
    """
    message_id = message.message_id
    if isinstance(error, Reject):
        logger.info(
            "handler rejected message %s: %s",
            message_id,
            error.reason,
            extra={"event": "handler_rejected", "message_id": message_id},
        )
        return Outcome(Verdict.QUARANTINE, Reason.REJECTED, detail=error.reason)
    if isinstance(error, Retry):
        return RETRY
    if error is not None:
        # Type and place only: the text of a handler's exception (and so its
        # traceback) may quote the plaintext, which never goes to a log.
        logger.warning(
            "handler failed on message %s (delivery %d of at most %d): %s at %s",
            message_id,
            deliveries,
            max_deliveries,
            type(error).__name__,
            _where(error),
            extra={
                "event": "handler_failed",
                "message_id": message_id,
                "delivery": deliveries,
                "max_deliveries": max_deliveries,
            },
        )
        return _HANDLER_ERROR if deliveries >= max_deliveries else REQUEUE
    if guard is not None:
        guard.handled(message.key_id, message.context, message_id)
    return ACK


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
