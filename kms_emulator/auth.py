"""Request authentication: RPC v1 (HMAC-SHA1) and ACS3-HMAC-SHA256 signatures.

Both schemes are recomputed server-side from the request as received, so a client
signing bug fails here exactly as it would against the real service. The error
codes are the POP gateway's (see docs/kms-emulator.md, "Authentication").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from envelope_mq.kms_emulator.errors import ApiError, missing_parameter
from envelope_mq.kms_emulator.policy import Principal

__all__ = [
    "ACS3_ALGORITHM",
    "SIGNATURE_PARAMS",
    "Authenticator",
    "NonceCache",
    "SignedRequest",
    "acs3_string_to_sign",
    "percent_encode",
    "v1_signature",
    "v1_string_to_sign",
]

ACS3_ALGORITHM = "ACS3-HMAC-SHA256"

#: Common parameters of the v1 scheme; the server strips them before the service.
SIGNATURE_PARAMS = frozenset(
    {
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureNonce",
        "SignatureType",
        "SignatureVersion",
        "Timestamp",
        "SecurityToken",
    }
)

# The real gateway's window: a request signed more than 15 minutes away from
# the server's clock is refused, and that also bounds how long a nonce is kept.
DEFAULT_WINDOW_SECONDS = 900.0
_MAX_NONCE_LENGTH = 128
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_ACS3_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")


@dataclass(frozen=True)
class SignedRequest:
    """What authentication needs of an HTTP request (parameters already decoded)."""

    method: str
    params: Mapping[str, str]  # query and form body, decoded
    query: Mapping[str, str]  # the URL query alone, decoded (ACS3 signs only it)
    headers: Mapping[str, str]  # lower-case names; repeated headers joined by ","
    body: bytes = field(default=b"", repr=False)


def percent_encode(text: str) -> str:
    """RFC 3986 encoding used by both schemes: only ``A-Za-z0-9-_.~`` stay as is."""
    return quote(text, safe="~")


def v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """The v1 StringToSign over every parameter except ``Signature``."""
    pairs = sorted(
        (percent_encode(k), percent_encode(v))
        for k, v in params.items()
        if k != "Signature"
    )
    canonical = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method}&%2F&{percent_encode(canonical)}"


def v1_signature(secret: str, string_to_sign: str) -> str:
    """base64(HMAC-SHA1(secret + "&", StringToSign))."""
    digest = hmac.new(
        (secret + "&").encode(), string_to_sign.encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def acs3_string_to_sign(
    request: SignedRequest, signed_headers: list[str], payload_hash: str
) -> str:
    """The ACS3 StringToSign: the algorithm and the hash of the canonical request."""
    query = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}"
        for k, v in sorted(request.query.items())
    )
    headers = "".join(
        f"{name}:{request.headers.get(name, '').strip()}\n" for name in signed_headers
    )
    canonical = "\n".join(
        [
            request.method,
            "/",
            query,
            headers,
            ";".join(signed_headers),
            payload_hash,
        ]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ACS3_ALGORITHM}\n{digest}"


class NonceCache:
    """SignatureNonces seen within the window, kept no longer than needed.

    A nonce only has to be remembered while a request carrying it could still
    pass the timestamp check, i.e. until its own timestamp + window. Nonces are
    kept in one-minute buckets by that expiry and whole buckets are dropped, so
    memory is bounded by the request rate times two windows.
    """

    def __init__(self, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> None:
        self._window = window_seconds
        self._buckets: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._buckets.values())

    def add(self, nonce: str, signed_at: float, now: float) -> bool:
        """Record ``nonce``; False if it was already seen (a replay)."""
        expiry_bucket = int((signed_at + self._window) // 60) + 1
        with self._lock:
            self._prune(now)
            for bucket in self._buckets.values():
                if nonce in bucket:
                    return False
            self._buckets.setdefault(expiry_bucket, set()).add(nonce)
            return True

    def _prune(self, now: float) -> None:
        current = int(now // 60)
        for minute in [m for m in self._buckets if m < current]:
            del self._buckets[minute]


class Authenticator:
    """Verifies a request's signature and returns the principal who signed it."""

    def __init__(
        self,
        lookup: Callable[[str], Principal | None],
        *,
        clock: Callable[[], float] = time.time,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        tokens: Callable[[str], Principal | None] | None = None,
    ) -> None:
        self._lookup = lookup
        self._tokens = tokens
        self._clock = clock
        self._window = window_seconds
        self.nonces = NonceCache(window_seconds)

    def authenticate(self, request: SignedRequest) -> Principal:
        """The signing principal; raises ApiError for any authentication failure."""
        authorization = request.headers.get("authorization", "")
        if authorization.startswith(ACS3_ALGORITHM):
            return self._acs3(request, authorization)
        if authorization:
            raise _incomplete_signature()
        return self._v1(request)

    def _v1(self, request: SignedRequest) -> Principal:
        params = request.params
        access_key_id = _required(params, "AccessKeyId")
        signature = _required(params, "Signature")
        if params.get("SignatureMethod") != "HMAC-SHA1":
            raise _unsupported("SignatureMethod", params.get("SignatureMethod"))
        if params.get("SignatureVersion") != "1.0":
            raise _unsupported("SignatureVersion", params.get("SignatureVersion"))
        nonce = _required(params, "SignatureNonce")
        signed_at = _parse_timestamp(_required(params, "Timestamp"), "Timestamp")
        principal = self._principal(access_key_id, params.get("SecurityToken"))
        self._check_window(signed_at)
        string_to_sign = v1_string_to_sign(request.method, params)
        expected = v1_signature(principal.access_key_secret, string_to_sign)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _mismatch(string_to_sign)
        self._check_nonce(access_key_id, nonce, signed_at)
        return principal

    def _acs3(self, request: SignedRequest, authorization: str) -> Principal:
        fields = _acs3_fields(authorization[len(ACS3_ALGORITHM) :])
        access_key_id = request.headers.get("x-acs-accesskey-id") or fields.get(
            "Credential", ""
        )
        signed_headers = fields.get("SignedHeaders", "").split(";")
        signature = fields.get("Signature", "")
        if (
            not access_key_id
            or not signature
            or signed_headers != sorted(set(signed_headers))
        ):
            raise _incomplete_signature()
        # The date, the nonce and (when it names the action) x-acs-action must be
        # covered by the signature, or they could be altered in flight.
        must_sign = {"x-acs-date", "x-acs-signature-nonce"}
        for optional in ("x-acs-action", "x-acs-security-token"):
            if optional in request.headers:
                must_sign.add(optional)
        if not must_sign.issubset(signed_headers):
            raise _incomplete_signature()
        nonce = _required(request.headers, "x-acs-signature-nonce")
        signed_at = _parse_timestamp(
            _required(request.headers, "x-acs-date"), "x-acs-date"
        )
        token = request.headers.get("x-acs-security-token") or request.params.get(
            "SecurityToken"
        )
        principal = self._principal(access_key_id, token)
        self._check_window(signed_at)
        # The body as received, not the declared x-acs-content-sha256: a body
        # altered after signing then fails as a signature mismatch.
        payload_hash = hashlib.sha256(request.body).hexdigest()
        string_to_sign = acs3_string_to_sign(request, signed_headers, payload_hash)
        expected = hmac.new(
            principal.access_key_secret.encode(),
            string_to_sign.encode(),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise _mismatch(string_to_sign)
        self._check_nonce(access_key_id, nonce, signed_at)
        return principal

    def _principal(self, access_key_id: str, token: str | None) -> Principal:
        """The signer; a SecurityToken must name the temporary key it came with."""
        if token:
            holder = self._tokens(token) if self._tokens is not None else None
            if holder is None:
                raise ApiError(
                    400,
                    "InvalidSecurityToken.Malformed",
                    "Specified SecurityToken is malformed.",
                )
            if holder.access_key_id != access_key_id:
                raise ApiError(
                    400,
                    "InvalidSecurityToken.MismatchWithAccessKey",
                    "Specified SecurityToken mismatch with the AccessKey.",
                )
            if holder.expires is not None and self._clock() >= holder.expires:
                raise ApiError(
                    400,
                    "InvalidSecurityToken.Expired",
                    "Specified SecurityToken is expired.",
                )
            return holder
        principal = self._lookup(access_key_id)
        if principal is None:
            raise ApiError(
                404,
                "InvalidAccessKeyId.NotFound",
                "The AccessKey ID provided does not exist in our records.",
            )
        if principal.security_token is not None:
            raise ApiError(
                400,
                "MissingSecurityToken",
                "SecurityToken is mandatory for temporary credentials.",
            )
        return principal

    def _check_window(self, signed_at: float) -> None:
        if abs(self._clock() - signed_at) > self._window:
            raise ApiError(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            )

    def _check_nonce(self, access_key_id: str, nonce: str, signed_at: float) -> None:
        if not nonce or len(nonce) > _MAX_NONCE_LENGTH:
            raise ApiError(
                400,
                "InvalidParameter",
                'The specified parameter "SignatureNonce" is not valid.',
            )
        # Nonces are per access key: two clients may well draw the same one.
        if not self.nonces.add(f"{access_key_id}\0{nonce}", signed_at, self._clock()):
            raise ApiError(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            )


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise missing_parameter(name)
    return value


def _parse_timestamp(text: str, name: str) -> float:
    try:
        if not _TIMESTAMP.fullmatch(text):
            raise ValueError(text)
        parsed = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ApiError(
            400,
            "IllegalTimestamp",
            f'The input parameter "{name}" that is mandatory for processing this '
            "request is not supplied or not valid (expected YYYY-MM-DDThh:mm:ssZ).",
        ) from None
    return parsed.replace(tzinfo=UTC).timestamp()


def _acs3_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        match = _ACS3_FIELD.fullmatch(part)
        if match is None:
            raise _incomplete_signature()
        fields[match.group(1)] = match.group(2)
    return fields


def _incomplete_signature() -> ApiError:
    return ApiError(
        400,
        "IncompleteSignature",
        "The request signature does not conform to Alibaba Cloud standards.",
    )


def _unsupported(name: str, value: str | None) -> ApiError:
    if value is None:
        return missing_parameter(name)
    return ApiError(
        400,
        "IncompleteSignature",
        f'The request signature does not conform to Alibaba Cloud standards: "{name}" '
        "is not supported.",
    )


def _mismatch(string_to_sign: str) -> ApiError:
    # The old Python SDK runs Message.split(":")[1] on this error and compares
    # the result with its own StringToSign, so the colon and the exact text matter.
    return ApiError(
        400,
        "SignatureDoesNotMatch",
        "Specified signature is not matched with our calculation. "
        f"server string to sign is:{string_to_sign}",
    )
