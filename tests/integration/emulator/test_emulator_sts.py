"""Emulator only: STS 2015-04-01 over TLS, reached by alibabacloud-credentials'
own providers (OIDC as ACK's RRSA, RAM role ARN, credentials URI), and temporary
credentials checked on every KMS request through every SDK flavour.

alibabacloud-credentials always speaks HTTPS to STS through Tea, whose TLS
contexts start from OpenSSL's defaults: SSL_CERT_FILE names the emulator's CA.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.kms_emulator import Emulator
from kms_clients import (
    FLAVOURS,
    Credentials,
    KmsCallError,
    OpenClient,
)

from envelope_mq.testing.oidc import OidcIssuer, role_arn

pytestmark = pytest.mark.integration

ADMIN = Credentials("sts-admin", "sts-admin-secret")
STRANGER = Credentials("sts-stranger", "sts-stranger-secret")
KEY_ID = "5e1d2c3b-4a59-4687-9a6b-7c8d9e0f1a2b"
PRODUCER_ROLE = role_arn("emq-producer")
CONSUMER_ROLE = role_arn("emq-consumer")
SUBJECT = "system:serviceaccount:orders:producer"


def _seed(issuer: OidcIssuer) -> dict[str, Any]:
    def principal(creds: Credentials) -> dict[str, Any]:
        return {
            "access_key_id": creds.access_key_id,
            "access_key_secret": creds.access_key_secret,
            "actions": ["*"],
        }

    return {
        "principals": [principal(ADMIN), principal(STRANGER)],
        "keys": [{"key_id": KEY_ID, "aliases": ["alias/sts"]}],
        "roles": [
            {
                "arn": PRODUCER_ROLE,
                "actions": ["GenerateDataKey"],
                "keys": ["alias/sts"],
                "assumable_by": [ADMIN.access_key_id],
                "oidc_provider": issuer.provider_arn,
                "oidc_subjects": [SUBJECT],
            },
            {
                "arn": CONSUMER_ROLE,
                "actions": ["Decrypt"],
                "assumable_by": [ADMIN.access_key_id],
                "credentials_uri": True,
            },
        ],
        "oidc_providers": [issuer.provider_seed()],
    }


@pytest.fixture(scope="module")
def issuer() -> OidcIssuer:
    return OidcIssuer()


@pytest.fixture
def emulator(issuer: OidcIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(seed=_seed(issuer), tls=True, admin=False) as emu:
        monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_file))
        yield emu


def _oidc_credentials(
    emu: Emulator, token_file: Path, role: str = PRODUCER_ROLE
) -> Credentials:
    from alibabacloud_credentials.provider.oidc import OIDCRoleArnCredentialsProvider

    provider = OIDCRoleArnCredentialsProvider(
        role_arn=role,
        oidc_provider_arn=_provider_arn(emu),
        oidc_token_file_path=str(token_file),
        sts_endpoint=emu.endpoint,
    )
    got = provider.get_credentials()
    return Credentials(
        got.get_access_key_id(), got.get_access_key_secret(), got.get_security_token()
    )


def _provider_arn(emu: Emulator) -> str:
    seed = emu.service.seed
    assert seed is not None
    return seed.oidc_providers[0].arn


def _client(
    open_client: OpenClient, flavour: str, emu: Emulator, creds: Credentials
) -> Any:
    return open_client(
        flavour, emu.endpoint, creds, "cn-hangzhou", "https", str(emu.ca_file)
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rrsa_credentials_from_assume_role_with_oidc_work_for_every_sdk(
    emulator: Emulator,
    issuer: OidcIssuer,
    tmp_path: Path,
    flavour: str,
    open_client: OpenClient,
) -> None:
    token_file = issuer.write_token(tmp_path / "token", subject=SUBJECT)
    creds = _oidc_credentials(emulator, token_file)
    assert creds.access_key_id.startswith("STS.")

    client = _client(open_client, flavour, emulator, creds)
    made = client.call("GenerateDataKey", KeyId="alias/sts")
    assert made["KeyId"] == KEY_ID
    # The role may only generate data keys.
    with pytest.raises(KmsCallError) as caught:
        client.call("Decrypt", CiphertextBlob=made["CiphertextBlob"])
    assert caught.value.code == "Forbidden.NoPermission"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"subject": "system:serviceaccount:orders:someone-else"}, "NoPermission"),
        ({"subject": SUBJECT, "iss": "https://elsewhere.example"},
         "AuthenticationFail.OIDCToken.IssuerNotMatch"),
        ({"subject": SUBJECT, "aud": "another-client"},
         "AuthenticationFail.OIDCToken.Invalid"),
        ({"subject": SUBJECT, "lifetime": -600},
         "AuthenticationFail.OIDCToken.Expired"),
    ],
)  # fmt: skip
def test_an_oidc_token_the_role_does_not_trust_is_refused(
    emulator: Emulator,
    issuer: OidcIssuer,
    tmp_path: Path,
    claims: dict[str, Any],
    code: str,
) -> None:
    from alibabacloud_credentials.exceptions import CredentialException

    token_file = issuer.write_token(tmp_path / "token", **claims)
    with pytest.raises(CredentialException) as caught:
        _oidc_credentials(emulator, token_file)
    assert f'"Code":"{code}"' in str(caught.value)


def test_an_oidc_token_signed_by_another_issuer_is_refused(
    emulator: Emulator, tmp_path: Path
) -> None:
    from alibabacloud_credentials.exceptions import CredentialException

    forger = OidcIssuer()
    token_file = forger.write_token(tmp_path / "token", subject=SUBJECT)
    with pytest.raises(CredentialException) as caught:
        _oidc_credentials(emulator, token_file)
    assert "AuthenticationFail.OIDCToken" in str(caught.value)


def test_rrsa_environment_as_ack_injects_it(
    emulator: Emulator, issuer: OidcIssuer, tmp_path: Path, open_client: OpenClient
) -> None:
    # The provider reads the three variables itself (at import time), so a
    # child process gets exactly the environment an ACK pod has.
    token_file = issuer.write_token(tmp_path / "token", subject=SUBJECT)
    child = (
        "from alibabacloud_credentials.provider.oidc import "
        "OIDCRoleArnCredentialsProvider as P\n"
        f"c = P(sts_endpoint={emulator.endpoint!r}).get_credentials()\n"
        "print(c.get_access_key_id(), c.get_access_key_secret(), "
        "c.get_security_token())\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SSL_CERT_FILE": str(emulator.ca_file),
        "ALIBABA_CLOUD_ROLE_ARN": PRODUCER_ROLE,
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": _provider_arn(emulator),
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE": str(token_file),
    }
    result = subprocess.run(
        [sys.executable, "-c", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    creds = Credentials(*result.stdout.split())
    client = _client(open_client, "new-sdk-acs3", emulator, creds)
    assert client.call("GenerateDataKey", KeyId="alias/sts")["KeyId"] == KEY_ID


def test_assume_role_with_an_access_key_the_role_trusts(
    emulator: Emulator, open_client: OpenClient
) -> None:
    from alibabacloud_credentials.exceptions import CredentialException
    from alibabacloud_credentials.provider.ram_role_arn import (
        RamRoleArnCredentialsProvider,
    )

    def assume(creds: Credentials) -> Credentials:
        got = RamRoleArnCredentialsProvider(
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
            role_arn=CONSUMER_ROLE,
            role_session_name="consumer-1",
            sts_endpoint=emulator.endpoint,
        ).get_credentials()
        return Credentials(
            got.get_access_key_id(),
            got.get_access_key_secret(),
            got.get_security_token(),
        )

    consumer = assume(ADMIN)
    admin = _client(open_client, "old-sdk-v1", emulator, ADMIN)
    blob = admin.call("GenerateDataKey", KeyId=KEY_ID)
    opened = _client(open_client, "old-sdk-v1", emulator, consumer).call(
        "Decrypt", CiphertextBlob=blob["CiphertextBlob"]
    )
    assert opened["Plaintext"] == blob["Plaintext"]
    with pytest.raises(CredentialException) as caught:
        assume(STRANGER)
    assert '"Code":"NoPermission"' in str(caught.value)


def test_the_credentials_uri_serves_the_role_and_needs_its_token(
    emulator: Emulator, open_client: OpenClient
) -> None:
    from alibabacloud_credentials.exceptions import CredentialException
    from alibabacloud_credentials.provider.uri import URLCredentialsProvider

    got = URLCredentialsProvider(
        uri=emulator.credentials_uri("emq-consumer")
    ).get_credentials()
    consumer = Credentials(
        got.get_access_key_id(), got.get_access_key_secret(), got.get_security_token()
    )
    admin = _client(open_client, "new-sdk-v1", emulator, ADMIN)
    blob = admin.call("GenerateDataKey", KeyId=KEY_ID)
    opened = _client(open_client, "new-sdk-acs3", emulator, consumer).call(
        "Decrypt", CiphertextBlob=blob["CiphertextBlob"]
    )
    assert opened["Plaintext"] == blob["Plaintext"]
    wrong = emulator.credentials_uri("emq-consumer").rsplit("=", 1)[0] + "=guess"
    for uri in (wrong, emulator.credentials_uri("emq-producer")):
        with pytest.raises(CredentialException):
            URLCredentialsProvider(uri=uri).get_credentials()


def _issued(emulator: Emulator) -> Credentials:
    answer = emulator.sts.call("AssumeRole", {"RoleArn": CONSUMER_ROLE}, None)
    issued = answer["Credentials"]
    return Credentials(
        issued["AccessKeyId"], issued["AccessKeySecret"], issued["SecurityToken"]
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown-token", "InvalidSecurityToken.Malformed"),
        ("token-of-another-key", "InvalidSecurityToken.MismatchWithAccessKey"),
        ("expired", "InvalidSecurityToken.Expired"),
        ("no-token", "MissingSecurityToken"),
    ],
)
def test_temporary_credentials_are_checked_on_every_kms_request(
    emulator: Emulator, open_client: OpenClient, flavour: str, case: str, code: str
) -> None:
    mine, other = _issued(emulator), _issued(emulator)
    sent = {
        "unknown-token": Credentials(
            mine.access_key_id, mine.access_key_secret, "CAIS" + "x" * 100
        ),
        "token-of-another-key": Credentials(
            mine.access_key_id, mine.access_key_secret, other.security_token
        ),
        "expired": mine,
        "no-token": Credentials(mine.access_key_id, mine.access_key_secret),
    }[case]
    client = _client(open_client, flavour, emulator, sent)
    if case == "expired":
        client.call("DescribeRegions")  # fine before expiry (any role may)
        emulator.clock_offset = 3601.0  # past DurationSeconds (3600)
    with pytest.raises(KmsCallError) as caught:
        client.call("DescribeRegions")
    assert (caught.value.status, caught.value.code) == (400, code)


def test_sts_lifetime_shortens_every_credential(issuer: OidcIssuer) -> None:
    with Emulator(seed=_seed(issuer), sts_lifetime=5.0) as emu:
        issued = emu.sts.call("AssumeRole", {"RoleArn": CONSUMER_ROLE}, None)
        holder = emu.sts.principal(issued["Credentials"]["AccessKeyId"])
        assert holder is not None
        assert holder.expires is not None
        assert holder.expires - emu.now() <= 5.0
