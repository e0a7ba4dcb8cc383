"""DedicatedKms (alibabacloud-kms20160120) against the emulator over verified TLS."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from envelope_mq.kms_emulator.tls import generate as generate_tls
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.kms import (
    AliyunKms,
    Credentials,
    DedicatedKms,
    kms_from_settings,
)

from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

CONTEXT = {"queue": "orders", "tenant": "a"}


def _settings(fixture: KmsFixture, role: str) -> Settings:
    creds = fixture.producer if role == "producer" else fixture.consumer
    assert fixture.ca_file is not None
    return Settings.from_env(
        {
            "KMS_INSTANCE_ENDPOINT": fixture.endpoint,
            "KMS_CA_FILE": fixture.ca_file,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": creds.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds.access_key_secret,
        }
    )


def test_an_untrusted_gateway_fails_clearly_and_is_never_asked(
    emq_kms_tls: KmsFixture, tmp_path: Path
) -> None:
    # First in this module: the SDK pools connections process-wide, per host
    # and port, so a test after a trusted call might reuse a verified socket.
    other_ca = generate_tls(tmp_path, ["127.0.0.1"]).ca_file
    creds = Credentials.static(
        emq_kms_tls.producer.access_key_id, emq_kms_tls.producer.access_key_secret
    )
    client = DedicatedKms(
        emq_kms_tls.endpoint, creds, ca_file=str(other_ca), max_attempts=1
    )
    with pytest.raises(KmsUnavailableError) as caught:
        client.generate_data_key(emq_kms_tls.alias, CONTEXT)
    assert caught.value.code == "EMQ.TlsCertificateUntrusted"
    assert "KMS_CA_FILE" in str(caught.value)
    assert emq_kms_tls.emulator.request_count == {}


def test_producer_and_consumer_settings_reach_the_gateway_over_verified_tls(
    emq_kms_tls: KmsFixture,
) -> None:
    with kms_from_settings(_settings(emq_kms_tls, "producer")) as producer:
        assert isinstance(producer, DedicatedKms)
        data_key = producer.generate_data_key(emq_kms_tls.alias, CONTEXT)
    with kms_from_settings(_settings(emq_kms_tls, "consumer")) as consumer:
        unwrapped = consumer.decrypt_data_key(data_key.wrapped, CONTEXT)
    assert unwrapped.plaintext == data_key.plaintext
    assert data_key.key_id == unwrapped.key_id == emq_kms_tls.key_id
    assert emq_kms_tls.emulator.request_count == {"GenerateDataKey": 1, "Decrypt": 1}


def test_a_wrong_context_is_a_permanent_refusal_with_the_services_code(
    emq_kms_tls: KmsFixture,
) -> None:
    producer = kms_from_settings(_settings(emq_kms_tls, "producer"))
    data_key = producer.generate_data_key(emq_kms_tls.alias, CONTEXT)
    consumer = kms_from_settings(_settings(emq_kms_tls, "consumer"))
    with pytest.raises(KmsRequestError) as caught:
        consumer.decrypt_data_key(data_key.wrapped, {"queue": "other"})
    assert caught.value.code == "InvalidParameter"
    assert caught.value.request_id
    assert caught.value.__cause__ is None  # no SDK exception crosses the boundary
    assert data_key.wrapped not in str(caught.value)


def test_an_unknown_alias_is_refused_as_the_service_says(
    emq_kms_tls: KmsFixture,
) -> None:
    with pytest.raises(KmsRequestError) as caught:
        kms_from_settings(_settings(emq_kms_tls, "producer")).generate_data_key(
            "alias/nowhere", CONTEXT
        )
    assert caught.value.code == "Forbidden.AliasNotFound"
    assert caught.value.http_status == 404


def test_a_gateway_nobody_answers_at_is_named_and_retried() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    client = DedicatedKms(
        f"https://127.0.0.1:{port}",
        Credentials.static("ak", "secret"),
        sleep=sleeps.append,
    )
    with pytest.raises(KmsUnavailableError) as caught:
        client.decrypt_data_key("blob", {})
    assert caught.value.code == "SDK.ConnectionFailed"
    assert f"https://127.0.0.1:{port}" in str(caught.value)
    assert len(sleeps) == 2


def test_a_dedicated_gateway_is_https_only() -> None:
    with pytest.raises(ConfigError, match="HTTPS"):
        DedicatedKms("http://127.0.0.1:8600", Credentials.static("ak", "secret"))


def test_without_an_instance_endpoint_the_shared_gateway_client_is_used() -> None:
    settings = Settings.from_env(
        {
            "KMS_ENDPOINT": "127.0.0.1:1",
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "ak",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
        }
    )
    assert isinstance(kms_from_settings(settings), AliyunKms)


def test_a_wrong_secret_is_the_callers_fault_on_the_gateway_too(
    emq_kms_tls: KmsFixture,
) -> None:
    assert emq_kms_tls.ca_file is not None
    client = DedicatedKms(
        emq_kms_tls.endpoint,
        Credentials.static(emq_kms_tls.producer.access_key_id, "wrong-secret"),
        ca_file=emq_kms_tls.ca_file,
    )
    with pytest.raises(KmsCallerError) as caught:
        client.generate_data_key(emq_kms_tls.alias, CONTEXT)
    assert caught.value.cause == "wrong AccessKey secret"
    assert "wrong-secret" not in str(caught.value)


def test_both_clients_probe_their_endpoint_with_their_own_trust(
    emq_kms_tls: KmsFixture, tmp_path: Path
) -> None:
    assert emq_kms_tls.ca_file is not None
    creds = Credentials.static("ak", "secret")
    # Trusted: nothing to say, and no request was sent.
    AliyunKms(
        credentials=creds, endpoint=emq_kms_tls.endpoint, ca_bundle=emq_kms_tls.ca_file
    ).probe()
    DedicatedKms(emq_kms_tls.endpoint, creds, ca_file=emq_kms_tls.ca_file).probe()
    assert emq_kms_tls.emulator.request_count == {}
    # Another CA: the probe says so, as a call would, naming the endpoint.
    other_ca = str(generate_tls(tmp_path, ["127.0.0.1"]).ca_file)
    for client in (
        AliyunKms(credentials=creds, endpoint=emq_kms_tls.endpoint, ca_bundle=other_ca),
        DedicatedKms(emq_kms_tls.endpoint, creds, ca_file=other_ca),
    ):
        with pytest.raises(KmsUnavailableError) as caught:
            client.probe()
        assert caught.value.code == "EMQ.TlsCertificateUntrusted"
        assert emq_kms_tls.endpoint in str(caught.value)
