"""An OIDC issuer for tests: signs ID tokens as ACK's RRSA projects them.

On ACK, a pod with RRSA gets three variables and a token file::

    ALIBABA_CLOUD_ROLE_ARN=acs:ram::<account>:role/<name>
    ALIBABA_CLOUD_OIDC_PROVIDER_ARN=acs:ram::<account>:oidc-provider/<name>
    ALIBABA_CLOUD_OIDC_TOKEN_FILE=/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token

:class:`OidcIssuer` makes such tokens (RS256 JWTs, audience ``sts.aliyuncs.com``,
subject ``system:serviceaccount:<namespace>:<name>``) and the seed entry that
makes the KMS emulator's STS trust them (see docs/kms-emulator.md, "STS").
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["DEFAULT_ACCOUNT_ID", "OidcIssuer", "role_arn"]

DEFAULT_ACCOUNT_ID = "1234567890123456"  # the emulator's account


def role_arn(name: str, account_id: str = DEFAULT_ACCOUNT_ID) -> str:
    """The ARN of the RAM role ``name``."""
    return f"acs:ram::{account_id}:role/{name}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class OidcIssuer:
    """One cluster's service-account issuer: a signing key and its JWKS."""

    def __init__(
        self, cluster_id: str | None = None, account_id: str = DEFAULT_ACCOUNT_ID
    ) -> None:
        cluster = cluster_id or "c" + uuid.uuid4().hex[:12]
        self.issuer = (
            f"https://oidc-ack-cn-hangzhou.oss-cn-hangzhou.aliyuncs.com/{cluster}"
        )
        self.provider_arn = f"acs:ram::{account_id}:oidc-provider/ack-rrsa-{cluster}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex[:16]

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWK set, as the provider publishes it."""
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self._kid,
                    "use": "sig",
                    "alg": "RS256",
                    "n": _b64_int(numbers.n),
                    "e": _b64_int(numbers.e),
                }
            ]
        }

    def provider_seed(self) -> dict[str, Any]:
        """The emulator seed's ``oidc_providers`` entry for this issuer."""
        return {
            "arn": self.provider_arn,
            "issuer": self.issuer,
            "client_ids": ["sts.aliyuncs.com"],
            "jwks": self.jwks,
        }

    def token(
        self,
        subject: str = "system:serviceaccount:default:envelope-mq",
        *,
        lifetime: float = 3600.0,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A signed ID token; ``claims`` override iss, aud, exp, ..."""
        issued = time.time() if now is None else now
        body = {
            "iss": self.issuer,
            "aud": "sts.aliyuncs.com",
            "sub": subject,
            "iat": int(issued),
            "exp": int(issued + lifetime),
            **claims,
        }
        header = {"alg": "RS256", "kid": self._kid, "typ": "JWT"}
        signed = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        )
        signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64(signature)}"

    def write_token(self, path: str | os.PathLike[str], **options: Any) -> Path:
        """Write a fresh token where ALIBABA_CLOUD_OIDC_TOKEN_FILE points."""
        target = Path(path)
        target.write_text(self.token(**options), encoding="ascii")
        return target
