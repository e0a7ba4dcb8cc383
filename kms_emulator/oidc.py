"""OIDC ID tokens, as ACK's RRSA projects them: a JWT checked against a JWKS.

Only what AssumeRoleWithOIDC needs: RS256 and ES256 signatures, the issuer,
the audience, the time window and the subject. No I/O: the JWKS is given.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from envelope_mq.kms_emulator.errors import ApiError

__all__ = ["Claims", "OidcProvider", "audiences", "public_keys"]

_MAX_TOKEN = 16 * 1024
_LEEWAY = 60.0  # seconds of clock difference tolerated on exp/nbf/iat
_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Claims:
    """The verified claims AssumeRoleWithOIDC reports back."""

    issuer: str
    subject: str
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class OidcProvider:
    """An identity provider registered in RAM: its ARN, issuer, audiences, keys."""

    arn: str
    issuer: str
    audiences: frozenset[str]
    keys: Mapping[str, _PublicKey]  # by "kid"; "" for a key without one

    def verify(self, token: str, now: float) -> Claims:
        """The token's claims; ApiError unless signed by a key of ours and valid."""
        if len(token) > _MAX_TOKEN or token.count(".") != 2:
            raise _invalid("The OIDC token is not a JWT.")
        head_b64, body_b64, signature_b64 = token.split(".")
        header = _json_part(head_b64)
        claims = _json_part(body_b64)
        signature = _b64(signature_b64)
        key = self.keys.get(str(header.get("kid", "")))
        if key is None and len(self.keys) == 1 and "kid" not in header:
            key = next(iter(self.keys.values()))
        if key is None:
            raise _invalid("The OIDC token is signed by a key the provider lacks.")
        signed = f"{head_b64}.{body_b64}".encode("ascii")
        _check_signature(key, str(header.get("alg", "")), signature, signed)
        if claims.get("iss") != self.issuer:
            raise ApiError(
                400,
                "AuthenticationFail.OIDCToken.IssuerNotMatch",
                "The issuer of the OIDC token does not match the OIDC provider.",
            )
        audiences = claims.get("aud")
        listed = (audiences,) if isinstance(audiences, str) else audiences
        if not isinstance(listed, list | tuple) or not self.audiences.intersection(
            str(a) for a in listed
        ):
            raise _invalid("The audience of the OIDC token is not a client id.")
        expiry, not_before = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(expiry, int | float) or now > expiry + _LEEWAY:
            raise ApiError(
                400, "AuthenticationFail.OIDCToken.Expired", "The OIDC token expired."
            )
        if isinstance(not_before, int | float) and now + _LEEWAY < not_before:
            raise _invalid("The OIDC token is not valid yet.")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("The OIDC token has no subject.")
        return Claims(self.issuer, subject, tuple(str(a) for a in listed))


def public_keys(jwks: Mapping[str, Any]) -> dict[str, _PublicKey]:
    """Public keys of a JWK set (RSA, EC P-256), by kid; ValueError if malformed."""
    entries = jwks.get("keys")
    if not isinstance(entries, list) or not entries:
        raise ValueError("a JWKS needs a non-empty 'keys' list")
    found: dict[str, _PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ValueError("each JWK must be a mapping")
        kid = str(entry.get("kid", ""))
        if entry.get("kty") == "RSA":
            found[kid] = rsa.RSAPublicNumbers(
                _int(entry, "e"), _int(entry, "n")
            ).public_key()
        elif entry.get("kty") == "EC" and entry.get("crv") == "P-256":
            found[kid] = ec.EllipticCurvePublicNumbers(
                _int(entry, "x"), _int(entry, "y"), ec.SECP256R1()
            ).public_key()
        else:
            raise ValueError("only RSA and EC P-256 JWKs are supported")
    return found


def _check_signature(
    key: _PublicKey, algorithm: str, signature: bytes, signed: bytes
) -> None:
    try:
        if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            return
        if (
            algorithm == "ES256"
            and isinstance(key, ec.EllipticCurvePublicKey)
            and len(signature) == 64
        ):
            r, s = (int.from_bytes(signature[i : i + 32], "big") for i in (0, 32))
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature:
        pass
    raise _invalid("The signature of the OIDC token is not valid.")


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(part))
    except (ValueError, UnicodeDecodeError):
        raise _invalid("The OIDC token is not a JWT.") from None
    if not isinstance(value, dict):
        raise _invalid("The OIDC token is not a JWT.")
    return value


def _b64(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, binascii.Error):
        raise _invalid("The OIDC token is not a JWT.") from None


def _int(entry: Mapping[str, Any], name: str) -> int:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK field {name!r} must be base64url text")
    return int.from_bytes(_b64url_strict(value), "big")


def _b64url_strict(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error) as exc:
        raise ValueError("JWK field is not base64url") from exc


def _invalid(message: str) -> ApiError:
    return ApiError(400, "AuthenticationFail.OIDCToken.Invalid", message)


def audiences(values: Sequence[str]) -> frozenset[str]:
    """The client ids a provider accepts (RRSA's default: sts.aliyuncs.com)."""
    return frozenset(values) if values else frozenset({"sts.aliyuncs.com"})
