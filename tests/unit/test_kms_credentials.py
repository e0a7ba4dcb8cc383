"""KMS credentials from the alibabacloud-credentials chain, seen by a stub KMS."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from alibabacloud_credentials.provider import DefaultCredentialsProvider
from envelope_mq.shared.config import CredentialSettings, Settings
from envelope_mq.shared.errors import ConfigError, KmsCallerError, KmsUnavailableError
from envelope_mq.shared.kms import AliyunKms, DedicatedKms
from envelope_mq.shared.kms.credentials import Credentials, parse_sts_endpoint
from kms_stub_server import Reply, StubKms

KEY = bytes(range(32))
SECRET = "stub-secret-never-shown"


def _ok() -> Reply:
    return Reply(
        200,
        {
            "RequestId": "r",
            "KeyId": "k",
            "KeyVersionId": "v1",
            "CiphertextBlob": "blob",
            "Plaintext": base64.b64encode(KEY).decode(),
        },
    )


@pytest.fixture
def stub() -> Iterator[StubKms]:
    server = StubKms()
    yield server
    server.close()


def _settings(stub: StubKms, home: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "KMS_ENDPOINT": f"http://{stub.endpoint}",
            "HOME": str(home),
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
            **env,
        }
    )


class CredentialsUri:
    """A credentials-URI service handing out a new temporary key per request."""

    def __init__(self, lifetime: timedelta) -> None:
        self.issued = 0
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.fail:
                    body = json.dumps({"Code": "Failed", "AccessKeySecret": SECRET})
                else:
                    outer.issued += 1
                    expiry = datetime.now(UTC) + lifetime
                    body = json.dumps(
                        {
                            "Code": "Success",
                            "AccessKeyId": f"STS.temp-{outer.issued}",
                            "AccessKeySecret": SECRET,
                            "SecurityToken": f"token-{outer.issued}",
                            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        }
                    )
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/credentials"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def short_lived() -> Iterator[CredentialsUri]:
    # Expiring within the library's 15-minute refresh margin: every request
    # refreshes, as a long-running process does near each token's end.
    service = CredentialsUri(timedelta(minutes=5))
    yield service
    service.close()


def test_a_security_token_in_the_settings_signs_every_request(
    stub: StubKms, tmp_path: Path
) -> None:
    settings = _settings(
        stub,
        tmp_path,
        ALIBABA_CLOUD_ACCESS_KEY_ID="STS.env",
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
        ALIBABA_CLOUD_SECURITY_TOKEN="env-token",
    )
    stub.reply(_ok())
    with AliyunKms.from_settings(settings) as kms:
        kms.decrypt_data_key("blob", {})
    (seen,) = stub.requests
    assert (seen.params["AccessKeyId"], seen.params["SecurityToken"]) == (
        "STS.env",
        "env-token",
    )


def test_without_an_access_key_the_chain_reads_the_aliyun_cli_profile(
    stub: StubKms, tmp_path: Path
) -> None:
    (tmp_path / ".aliyun").mkdir()
    profile = {
        "name": "sts",
        "mode": "StsToken",
        "access_key_id": "STS.profile",
        "access_key_secret": SECRET,
        "sts_token": "profile-token",
    }
    config = {"current": "sts", "profiles": [profile]}
    (tmp_path / ".aliyun" / "config.json").write_text(json.dumps(config))
    stub.reply(_ok())
    with AliyunKms.from_settings(_settings(stub, tmp_path)) as kms:
        kms.decrypt_data_key("blob", {})
    (seen,) = stub.requests
    assert seen.params["SecurityToken"] == "profile-token"


def test_temporary_credentials_are_refreshed_without_a_new_client(
    stub: StubKms, tmp_path: Path, short_lived: CredentialsUri
) -> None:
    settings = _settings(stub, tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=short_lived.url)
    with AliyunKms.from_settings(settings) as kms:
        for _ in range(3):
            stub.reply(_ok())
            kms.decrypt_data_key("blob", {})
    used = [(s.params["AccessKeyId"], s.params["SecurityToken"]) for s in stub.requests]
    assert used == [(f"STS.temp-{n}", f"token-{n}") for n in (1, 2, 3)]


def test_credentials_that_cannot_be_refreshed_are_transient_and_quote_no_secret(
    stub: StubKms, tmp_path: Path, short_lived: CredentialsUri
) -> None:
    settings = _settings(stub, tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=short_lived.url)
    sleeps: list[float] = []
    with AliyunKms.from_settings(settings, sleep=sleeps.append) as kms:
        stub.reply(_ok())
        kms.decrypt_data_key("blob", {})
        short_lived.fail = True
        with pytest.raises(KmsUnavailableError) as info:
            kms.decrypt_data_key("blob", {})
    assert info.value.code == "EMQ.CredentialsUnavailable"
    assert SECRET not in str(info.value)
    assert len(sleeps) == 2  # retried, as any transient failure
    assert len(stub.requests) == 1  # nothing unsigned was sent


def test_no_credentials_anywhere_is_the_callers_fault_and_sends_nothing(
    stub: StubKms, tmp_path: Path
) -> None:
    with (
        AliyunKms.from_settings(_settings(stub, tmp_path)) as kms,
        pytest.raises(KmsCallerError, match="no KMS credentials") as info,
    ):
        kms.decrypt_data_key("blob", {})
    assert info.value.code == "EMQ.NoCredentials"
    assert stub.requests == []


def test_the_chain_keeps_the_librarys_own_order() -> None:
    # Our chain is the library's, built from our settings: if a release of
    # alibabacloud-credentials reorders its chain, this says so.
    chain = DefaultCredentialsProvider()._DefaultCredentialsProvider__providers_chain
    library = [type(p).__name__ for p in chain]
    ours = [
        "EnvironmentVariableCredentialsProvider",  # Settings' AccessKey
        "OIDCRoleArnCredentialsProvider",
        "CLIProfileCredentialsProvider",
        "ProfileCredentialsProvider",
        "EcsRamRoleCredentialsProvider",
        "URLCredentialsProvider",
    ]
    assert [name for name in ours if name in library] == library


def test_an_access_key_without_its_secret_is_a_config_error_naming_both() -> None:
    with pytest.raises(ConfigError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        Credentials.from_settings(Settings(access_key_id="only-the-id"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sts.cn-hangzhou.aliyuncs.com", "sts.cn-hangzhou.aliyuncs.com"),
        ("https://127.0.0.1:8443/", "127.0.0.1:8443"),
        (None, None),
    ],
)
def test_the_sts_endpoint_is_a_host_spoken_to_over_tls(
    given: str | None, expected: str | None
) -> None:
    assert parse_sts_endpoint(given) == expected


@pytest.mark.parametrize("given", ["http://127.0.0.1:8080", "https://", "h/path"])
def test_an_sts_endpoint_without_tls_or_host_is_refused(given: str) -> None:
    with pytest.raises(ConfigError):
        parse_sts_endpoint(given)


def test_the_credential_settings_are_the_librarys_variables() -> None:
    settings = CredentialSettings.from_env(
        {
            "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1:role/consumer",
            "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::1:oidc-provider/ack",
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE": "/var/run/token",
            "ALIBABA_CLOUD_STS_ENDPOINT": "sts-vpc.cn-hangzhou.aliyuncs.com",
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "TRUE",
            "ALIBABA_CLOUD_CREDENTIALS_URI": "http://127.0.0.1:1/c",
        }
    )
    assert settings.role_arn == "acs:ram::1:role/consumer"
    assert settings.oidc_token_file == "/var/run/token"
    assert settings.sts_endpoint == "sts-vpc.cn-hangzhou.aliyuncs.com"
    assert settings.ecs_metadata_disabled
    assert settings.credentials_uri == "http://127.0.0.1:1/c"


def test_a_configured_credentials_service_that_is_down_is_an_outage(
    stub: StubKms, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    uri = f"http://127.0.0.1:{port}/credentials"
    settings = _settings(stub, tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=uri)
    sleeps: list[float] = []
    with (
        AliyunKms.from_settings(settings, sleep=sleeps.append) as kms,
        pytest.raises(KmsUnavailableError, match="CREDENTIALS_URI") as info,
    ):
        kms.decrypt_data_key("blob", {})
    # Transient (the consumer holds), retried, never a library exception.
    assert info.value.code == "EMQ.CredentialsUnavailable"
    assert len(sleeps) == 2
    assert stub.requests == []


def test_a_chosen_source_that_stops_answering_is_transient(
    stub: StubKms, tmp_path: Path, short_lived: CredentialsUri
) -> None:
    settings = _settings(stub, tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=short_lived.url)
    sleeps: list[float] = []
    with AliyunKms.from_settings(settings, sleep=sleeps.append) as kms:
        stub.reply(_ok())
        kms.decrypt_data_key("blob", {})
        short_lived.close()  # the service goes away
        with pytest.raises(KmsUnavailableError) as info:
            kms.decrypt_data_key("blob", {})
    assert info.value.code == "EMQ.CredentialsUnavailable"
    assert info.value.__cause__ is None  # the library's exception stays inside


def test_a_credentials_uris_token_never_appears_in_an_error(
    stub: StubKms, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}/sts/credentials/role?token=capability-secret"
    settings = _settings(stub, tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=uri)
    with (
        AliyunKms.from_settings(settings, max_attempts=1) as kms,
        pytest.raises(KmsUnavailableError) as info,
    ):
        kms.decrypt_data_key("blob", {})
    assert "capability-secret" not in str(info.value)
    direct = Credentials.credentials_uri(uri)
    with pytest.raises(KmsUnavailableError) as again:
        direct.current()
    assert "capability-secret" not in str(again.value)


def test_the_current_sdk_gets_our_credential_errors_unwrapped(tmp_path: Path) -> None:
    # alibabacloud-kms20160120 wraps what its credential provider raises;
    # DedicatedKms asks first, so the errors stay ours.
    nothing = Credentials.chain(
        CredentialSettings(home=str(tmp_path), ecs_metadata_disabled=True)
    )
    gateway = DedicatedKms("https://127.0.0.1:1", nothing, max_attempts=1)
    with pytest.raises(KmsCallerError) as info:
        gateway.decrypt_data_key("blob", {})
    assert info.value.code == "EMQ.NoCredentials"
