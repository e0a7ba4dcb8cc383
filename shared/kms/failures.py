"""What a failed KMS call means, whichever SDK made it.

Local codes for failures that never got an answer from KMS, and the rules
both KMS clients (:mod:`.aliyun`, :mod:`.dedicated`) share: which failures
are transient, and which surely left KMS untouched (so that even a call that
is not idempotent may be sent again).
"""

from __future__ import annotations

from envelope_mq.shared.kms.credentials import CREDENTIALS_UNAVAILABLE

__all__ = [
    "BAD_DATA_KEY",
    "BAD_RESPONSE",
    "CONNECT_FAILED",
    "CONNECT_TIMEOUT",
    "HINTS",
    "HTTP_ERROR",
    "KEY_DISABLED",
    "KEY_PENDING_DELETION",
    "READ_TIMEOUT",
    "TLS_FAILED",
    "TLS_UNTRUSTED",
    "is_throttling",
    "is_transient",
    "key_state_refusal",
    "network_code",
    "surely_not_processed",
]

CONNECT_FAILED = "SDK.ConnectionFailed"
CONNECT_TIMEOUT = "SDK.ConnectTimeout"
READ_TIMEOUT = "SDK.ReadTimeout"
HTTP_ERROR = "SDK.HttpError"
BAD_RESPONSE = "EMQ.InvalidResponse"
BAD_DATA_KEY = "EMQ.InvalidDataKey"
# TLS failures: the server's certificate is not trusted (wrong or missing
# KMS_CA_FILE, or a name mismatch), or no TLS session could be set up at all
# (e.g. an https:// endpoint in front of a plain-HTTP server). Nothing of the
# request was sent in either case.
TLS_UNTRUSTED = "EMQ.TlsCertificateUntrusted"
TLS_FAILED = "EMQ.TlsHandshakeFailed"
HINTS = {
    TLS_UNTRUSTED: " (the server's TLS certificate is not trusted: give its CA "
    "with KMS_CA_FILE, and check the endpoint's host name)",
    TLS_FAILED: " (no TLS session: is the endpoint really HTTPS?)",
    CONNECT_FAILED: " (nothing answers there: check KMS_ENDPOINT and the network)",
}

# The master key itself cannot be used (kms-api.md, key-state matrix): every
# ciphertext under it is unreadable until it is enabled again, and for good
# once the pending window ends. What crypto-shredding does to a key. A key
# deleted at the end of its window answers Forbidden.KeyNotFound, as a key of
# another account does: not a key state, and left out here.
KEY_DISABLED = "Rejected.Disabled"  # 409, DisableKey
KEY_PENDING_DELETION = "Rejected.PendingDeletion"  # 409, ScheduleKeyDeletion
_KEY_STATES = {
    KEY_DISABLED: "disabled",
    KEY_PENDING_DELETION: "pending-deletion",
    # Older KMS documentation spells the code so; the service may too.
    "Rejetced.PendingDeletion": "pending-deletion",
}


def key_state_refusal(code: str) -> str | None:
    """``disabled`` or ``pending-deletion`` when ``code`` says the master key
    cannot be used now, whatever the request; else None."""
    return _KEY_STATES.get(code)


def network_code(text: str) -> str:
    """A local code from the wording of an HTTP library's exception."""
    lowered = text.lower()
    if "certificate verify failed" in lowered:
        return TLS_UNTRUSTED
    if "sslerror" in lowered or "ssl:" in lowered:
        return TLS_FAILED
    if "read timed out" in lowered:
        return READ_TIMEOUT
    if "connecttimeout" in lowered or "connect timeout" in lowered:
        return CONNECT_TIMEOUT
    if (
        "newconnectionerror" in lowered
        or "connection refused" in lowered
        or "name or service not known" in lowered
        or "nameresolutionerror" in lowered
    ):
        return CONNECT_FAILED
    return HTTP_ERROR


def is_throttling(code: str) -> bool:
    """The shared gateway's 429 Rejected.Throttling, or the older 400 Throttling."""
    return code.startswith(("Throttling", "Rejected.Throttling"))


def is_transient(status: int | None, code: str) -> bool:
    """A refusal that may succeed later: HTTP 5xx, 429, throttling."""
    return (status or 0) >= 500 or status == 429 or is_throttling(code)


def surely_not_processed(code: str) -> bool:
    """KMS surely did not act on the request (so it may be sent again)."""
    if code in (CREDENTIALS_UNAVAILABLE, CONNECT_FAILED, CONNECT_TIMEOUT):
        return True  # nothing was sent, or nothing arrived
    return is_throttling(code)
