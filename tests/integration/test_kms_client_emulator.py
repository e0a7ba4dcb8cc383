"""AliyunKms (the real aliyun-python-sdk-kms) against the real emulator, strict auth."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from envelope_mq.kms_emulator.tls import generate as generate_tls
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError, KmsRequestError, KmsUnavailableError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import AliyunKms
from procfs import sockets_to

from envelope_mq.testing.kms import KmsFixture

pytestmark = pytest.mark.integration

CONTEXT = {"tenant": "a", "用途": "测试 ünïcode"}


def _client(kms: KmsFixture, role: str, **overrides: object) -> AliyunKms:
    creds = kms.producer if role == "producer" else kms.consumer
    options: dict[str, object] = {
        "endpoint": kms.endpoint,
        "max_attempts": 1,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    options.update(overrides)
    return AliyunKms(creds.access_key_id, creds.access_key_secret, **options)  # type: ignore[arg-type]


def test_data_key_round_trips_between_the_two_roles(emq_kms: KmsFixture) -> None:
    data_key = _client(emq_kms, "producer").generate_data_key(emq_kms.alias, CONTEXT)

    unwrapped = _client(emq_kms, "consumer").decrypt_data_key(data_key.wrapped, CONTEXT)

    assert unwrapped.plaintext == data_key.plaintext
    assert len(unwrapped.plaintext) == 32
    assert data_key.key_id == emq_kms.key_id  # the alias resolves to the key id
    assert unwrapped.key_id == emq_kms.key_id  # Decrypt names the key it used


def test_endpoint_with_scheme_works_like_host_port(emq_kms: KmsFixture) -> None:
    client = _client(emq_kms, "producer", endpoint=f"http://{emq_kms.endpoint}")

    assert client.generate_data_key(emq_kms.key_id, {}).key_id == emq_kms.key_id


def test_unwrapping_under_another_context_is_refused(emq_kms: KmsFixture) -> None:
    data_key = _client(emq_kms, "producer").generate_data_key(
        emq_kms.key_id, {"ab": "c"}
    )

    with pytest.raises(KmsRequestError) as caught:
        _client(emq_kms, "consumer").decrypt_data_key(data_key.wrapped, {"a": "bc"})

    assert caught.value.code == "InvalidParameter"
    assert caught.value.request_id


def test_producer_principal_cannot_decrypt(emq_kms: KmsFixture) -> None:
    producer = _client(emq_kms, "producer")
    data_key = producer.generate_data_key(emq_kms.key_id, CONTEXT)

    with pytest.raises(KmsRequestError) as caught:
        producer.decrypt_data_key(data_key.wrapped, CONTEXT)

    assert caught.value.code.startswith("Forbidden")


def test_consumer_principal_cannot_generate_data_keys(emq_kms: KmsFixture) -> None:
    with pytest.raises(KmsRequestError) as caught:
        _client(emq_kms, "consumer").generate_data_key(emq_kms.key_id, CONTEXT)

    assert caught.value.code.startswith("Forbidden")


def test_wrong_secret_is_a_permanent_error_without_the_secret(
    emq_kms: KmsFixture,
) -> None:
    client = AliyunKms(
        emq_kms.producer.access_key_id,
        "not-the-secret",
        endpoint=emq_kms.endpoint,
        max_attempts=1,
    )

    with pytest.raises(KmsRequestError) as caught:
        client.generate_data_key(emq_kms.key_id, CONTEXT)

    # The emulator answers SignatureDoesNotMatch with its string-to-sign; the SDK
    # finds it equal to its own and renames the error, exactly as with the cloud.
    assert caught.value.code == "InvalidAccessKeySecret"
    assert "not-the-secret" not in str(caught.value)


def test_unknown_access_key_is_a_permanent_error(emq_kms: KmsFixture) -> None:
    client = AliyunKms("nobody", "secret", endpoint=emq_kms.endpoint, max_attempts=1)

    with pytest.raises(KmsRequestError) as caught:
        client.generate_data_key(emq_kms.key_id, CONTEXT)

    assert caught.value.code == "InvalidAccessKeyId.NotFound"


def test_disabled_key_is_a_permanent_error(emq_kms: KmsFixture) -> None:
    consumer = _client(emq_kms, "consumer")
    data_key = _client(emq_kms, "producer").generate_data_key(emq_kms.key_id, CONTEXT)
    emq_kms.emulator.service.call("DisableKey", {"KeyId": emq_kms.key_id}, None)

    with pytest.raises(KmsRequestError) as caught:
        consumer.decrypt_data_key(data_key.wrapped, CONTEXT)

    assert caught.value.code == "Rejected.Disabled"


@pytest.mark.parametrize(
    "fault",
    [{"outage_seconds": 30.0}, {"throttle_ratio": 1.0}, {"error_ratio": 1.0}],
    ids=["outage", "throttling", "http-503"],
)
def test_kms_faults_are_transient_errors(
    emq_kms: KmsFixture, fault: dict[str, float]
) -> None:
    emq_kms.emulator.faults.set(**fault)

    with pytest.raises(KmsUnavailableError):
        _client(emq_kms, "producer").generate_data_key(emq_kms.key_id, CONTEXT)


def test_transient_errors_are_retried_until_kms_recovers(emq_kms: KmsFixture) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        emq_kms.emulator.faults.clear()  # KMS comes back during the first back-off

    emq_kms.emulator.faults.set(throttle_ratio=1.0)
    client = _client(emq_kms, "producer", max_attempts=3, sleep=sleep)

    assert client.generate_data_key(emq_kms.key_id, CONTEXT).key_id == emq_kms.key_id
    assert len(slept) == 1


def test_caches_make_one_kms_call_per_key_under_eight_threads(
    emq_kms: KmsFixture,
) -> None:
    producer_cache = DataKeyCache(_client(emq_kms, "producer"))
    consumer_cache = UnwrapCache(_client(emq_kms, "consumer"))
    emq_kms.emulator.reset_request_count()
    start = threading.Barrier(8)
    unwrapped: list[bytes] = []

    def work() -> None:
        start.wait()
        for _ in range(50):
            data_key = producer_cache.acquire(emq_kms.key_id, CONTEXT)
            unwrapped.append(consumer_cache.unwrap(data_key.wrapped, CONTEXT).plaintext)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(unwrapped)) == 1
    assert len(unwrapped) == 400
    assert emq_kms.emulator.request_count == {"GenerateDataKey": 1, "Decrypt": 1}


def test_close_releases_the_sdk_connection_pool(emq_kms: KmsFixture) -> None:
    port = emq_kms.emulator.port
    with _client(emq_kms, "producer") as client:
        client.generate_data_key(emq_kms.key_id, CONTEXT)
        assert sockets_to(port) == 1  # the SDK keeps the connection pooled

    assert sockets_to(port) == 0
    client.close()  # idempotent
    # A request after close opens a new connection rather than failing.
    assert client.generate_data_key(emq_kms.key_id, CONTEXT).key_id == emq_kms.key_id
    client.close()


def test_settings_with_kms_ca_file_reach_a_tls_emulator(
    emq_kms_tls: KmsFixture,
) -> None:
    assert emq_kms_tls.ca_file is not None
    settings = Settings.from_env(
        {
            "KMS_ENDPOINT": emq_kms_tls.endpoint,
            "KMS_CA_FILE": emq_kms_tls.ca_file,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": emq_kms_tls.producer.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": emq_kms_tls.producer.access_key_secret,
        }
    )
    with AliyunKms.from_settings(settings) as client:
        data_key = client.generate_data_key(emq_kms_tls.alias, CONTEXT)

    assert data_key.key_id == emq_kms_tls.key_id
    assert emq_kms_tls.emulator.request_count == {"GenerateDataKey": 1}


@pytest.mark.parametrize("trust", ["another-ca", "system-cas"])
def test_an_untrusted_tls_emulator_fails_clearly_and_is_never_asked(
    emq_kms_tls: KmsFixture, trust: str, tmp_path: Path
) -> None:
    other_ca = generate_tls(tmp_path, ["127.0.0.1"]).ca_file
    ca = str(other_ca) if trust == "another-ca" else None
    client = _client(emq_kms_tls, "producer", ca_bundle=ca)

    with client, pytest.raises(KmsUnavailableError) as caught:
        client.generate_data_key(emq_kms_tls.alias, CONTEXT)

    assert caught.value.code == "EMQ.TlsCertificateUntrusted"
    assert "KMS_CA_FILE" in str(caught.value)
    assert emq_kms_tls.emulator.request_count == {}


def test_a_ca_file_that_is_not_pem_is_a_configuration_error(
    emq_kms_tls: KmsFixture, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path in (str(not_pem), str(tmp_path / "missing.pem")):
        with pytest.raises(ConfigError, match="KMS CA file"):
            _client(emq_kms_tls, "producer", ca_bundle=path)


_DEBUG_CHILD = """
import sys
from envelope_mq.shared.errors import KmsError
from envelope_mq.shared.kms import AliyunKms

endpoint, key_id, secret, marker = sys.argv[1:5]
with AliyunKms(key_id, secret, endpoint=endpoint, max_attempts=1) as kms:
    try:
        kms.call("Encrypt", {"KeyId": "alias/x", "Plaintext": marker})
    except KmsError as exc:
        print("refused:", exc.code)
"""


def test_the_sdk_debug_switch_never_prints_request_parameters(
    emq_kms: KmsFixture,
) -> None:
    # DEBUG=sdk makes aliyunsdkcore print each request URL (every parameter)
    # through a stderr handler of its own.
    marker = "debug-switch-marker-" + "x" * 12
    env = {**os.environ, "DEBUG": "sdk"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _DEBUG_CHILD,
            emq_kms.endpoint,
            emq_kms.producer.access_key_id,
            emq_kms.producer.access_key_secret,
            marker,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "refused: Forbidden.NoPermission" in result.stdout
    assert emq_kms.emulator.request_count == {"Encrypt": 1}
    for secret in (marker, emq_kms.producer.access_key_id):
        assert secret not in result.stderr
        assert secret not in result.stdout
