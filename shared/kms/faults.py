"""Whose fault a KMS refusal is: the caller's, or the message's.

A refusal of the caller (a wrong AccessKey secret, an unknown AccessKeyId, a
clock too far off, a bad STS token) fails every request alike until an
operator fixes the configuration; no message is to blame, so a consumer must
not quarantine any (:class:`KmsCallerError`). Every other refusal says
something about the request itself (a blob from an unknown key, a context
that does not match, a disabled key) and stays a plain ``KmsRequestError``.

A permission refusal (``Forbidden.NoPermission``) could be either: this
consumer's RAM policy is wrong, or the message is under a key it must not
read. Only the caller knows which keys it is meant to use, so the consumer
decides (see consumer/keypolicy.py); :func:`is_permission_refusal` names them.
"""

from __future__ import annotations

__all__ = ["caller_fault", "is_permission_refusal"]

# code -> the likely cause, as an operator would fix it
_CALLER_CODES = {
    "SignatureDoesNotMatch": "wrong AccessKey secret",
    # The Python SDK renames SignatureDoesNotMatch to this when the server's
    # string-to-sign equals its own: the secret is wrong.
    "InvalidAccessKeySecret": "wrong AccessKey secret",
    "IncompleteSignature": "malformed request signature (SDK or proxy problem)",
    "InvalidAccessKeyId.NotFound": "unknown AccessKeyId (deleted, or a typo)",
    "InvalidAccessKeyId.Inactive": "the AccessKey is disabled",
    "InvalidAccessKeyId": "unknown AccessKeyId (deleted, or a typo)",
    "InvalidTimeStamp.Expired": "clock skew: this host's clock is off by minutes",
    "IllegalTimestamp": "clock skew or a malformed request timestamp",
    "InvalidSecurityToken.Expired": "the STS security token has expired",
    "InvalidSecurityToken.Malformed": "malformed STS security token",
    "InvalidSecurityToken.MismatchWithAccessKey": (
        "the STS security token belongs to another AccessKey"
    ),
}
_CALLER_PREFIXES = ("InvalidSecurityToken.", "InvalidAccessKeyId.")
_PERMISSION_CODES = frozenset({"Forbidden.NoPermission", "Forbidden.RAM"})


def caller_fault(code: str) -> str | None:
    """The likely cause when ``code`` blames the caller, else None."""
    cause = _CALLER_CODES.get(code)
    if cause is None and code.startswith(_CALLER_PREFIXES):
        cause = "invalid credentials"
    return cause


def is_permission_refusal(code: str) -> bool:
    """Whether ``code`` is RAM refusing the call (caller or message: ambiguous)."""
    return code in _PERMISSION_CODES
