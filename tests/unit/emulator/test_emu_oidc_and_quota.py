"""The emulator's OIDC token checks (no algorithm confusion, no unsigned tokens)
and its QPS meter, without a server."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from envelope_mq.kms_emulator.errors import ApiError, SeedError
from envelope_mq.kms_emulator.oidc import OidcProvider, public_keys
from envelope_mq.kms_emulator.quota import QpsLimiter
from envelope_mq.kms_emulator.seed import load_seed

from envelope_mq.testing.oidc import OidcIssuer

NOW = 1_800_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _provider(issuer: OidcIssuer) -> OidcProvider:
    return OidcProvider(
        arn=issuer.provider_arn,
        issuer=issuer.issuer,
        audiences=frozenset({"sts.aliyuncs.com"}),
        keys=public_keys(issuer.jwks),
    )


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


@pytest.fixture(scope="module")
def issuer() -> OidcIssuer:
    return OidcIssuer()


def test_a_token_of_the_issuer_verifies_and_reports_its_claims(
    issuer: OidcIssuer,
) -> None:
    claims = _provider(issuer).verify(issuer.token("system:sa:a", now=NOW), NOW)
    assert (claims.subject, claims.audiences) == ("system:sa:a", ("sts.aliyuncs.com",))


def test_an_unsigned_token_is_refused(issuer: OidcIssuer) -> None:
    good = issuer.token(now=NOW)
    claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
    token = _forge({"alg": "none"}, claims, b"")
    with pytest.raises(ApiError) as caught:
        _provider(issuer).verify(token, NOW)
    assert caught.value.code == "AuthenticationFail.OIDCToken.Invalid"


def test_hs256_keyed_with_the_public_key_is_refused(issuer: OidcIssuer) -> None:
    # Algorithm confusion: an HMAC "signature" keyed with public key bytes.
    good = issuer.token(now=NOW)
    head_body = good.rsplit(".", 1)[0]
    mac = hmac.HMAC(json.dumps(issuer.jwks).encode(), hashes.SHA256())
    mac.update(head_body.encode())
    kid = issuer.jwks["keys"][0]["kid"]
    header = {"alg": "HS256", "kid": kid}
    claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
    with pytest.raises(ApiError):
        _provider(issuer).verify(_forge(header, claims, mac.finalize()), NOW)


def test_a_changed_claim_breaks_the_signature(issuer: OidcIssuer) -> None:
    head, body, signature = issuer.token("system:sa:a", now=NOW).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "system:sa:admin"
    forged = f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(ApiError) as caught:
        _provider(issuer).verify(forged, NOW)
    assert caught.value.code == "AuthenticationFail.OIDCToken.Invalid"


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"lifetime": -120}, "AuthenticationFail.OIDCToken.Expired"),
        ({"nbf": int(NOW) + 3600}, "AuthenticationFail.OIDCToken.Invalid"),
        ({"aud": ["someone-else"]}, "AuthenticationFail.OIDCToken.Invalid"),
        ({"iss": "https://other"}, "AuthenticationFail.OIDCToken.IssuerNotMatch"),
        ({"sub": ""}, "AuthenticationFail.OIDCToken.Invalid"),
    ],
)
def test_claims_outside_the_rules_are_refused(
    issuer: OidcIssuer, options: dict[str, Any], code: str
) -> None:
    with pytest.raises(ApiError) as caught:
        _provider(issuer).verify(issuer.token(now=NOW, **options), NOW)
    assert caught.value.code == code


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**", "x" * 20000])
def test_garbage_is_refused_as_invalid(issuer: OidcIssuer, token: str) -> None:
    with pytest.raises(ApiError) as caught:
        _provider(issuer).verify(token, NOW)
    assert caught.value.code == "AuthenticationFail.OIDCToken.Invalid"


def test_es256_tokens_verify_against_an_ec_jwk() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "e1",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    provider = OidcProvider(
        "arn",
        "https://iss",
        frozenset({"sts.aliyuncs.com"}),
        public_keys({"keys": [jwk]}),
    )
    claims = {
        "iss": "https://iss",
        "aud": "sts.aliyuncs.com",
        "sub": "s",
        "exp": NOW + 60,
    }
    head = _b64(json.dumps({"alg": "ES256", "kid": "e1"}).encode())
    body = _b64(json.dumps(claims).encode())
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert provider.verify(f"{head}.{body}.{_b64(raw)}", NOW).subject == "s"


def test_a_seed_role_must_name_a_known_provider(issuer: OidcIssuer) -> None:
    seed = {
        "roles": [
            {
                "arn": "acs:ram::1234567890123456:role/r",
                "actions": ["Decrypt"],
                "oidc_provider": "acs:ram::1:oidc-provider/missing",
            }
        ],
        "oidc_providers": [issuer.provider_seed()],
    }
    with pytest.raises(SeedError, match="no such entry in oidc_providers"):
        load_seed(seed)


def test_the_meter_allows_a_burst_of_one_second_then_the_rate() -> None:
    now = [0.0]
    meter = QpsLimiter(10, clock=lambda: now[0])
    assert sum(meter.allow() for _ in range(15)) == 10
    now[0] += 0.3
    assert sum(meter.allow() for _ in range(15)) == 3
    now[0] += 60.0  # idle time refills only up to one second's worth
    assert sum(meter.allow() for _ in range(15)) == 10
