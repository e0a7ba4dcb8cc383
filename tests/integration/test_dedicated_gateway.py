"""Through the emulator in dedicated-gateway mode: a KMS 3.0 instance's gateway.

Clients name the real host, ``<instance-id>.cryptoservice.kms.aliyuncs.com``,
verify its certificate against the instance's own CA (KMS_CA_FILE), and reach
it through an HTTPS proxy (the emulator's CONNECT tunnel stands in for the
VPC's DNS), as produce and consume do with KMS_INSTANCE_ENDPOINT.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_kit import throwaway_queue
from envelope_mq.kms_emulator import Emulator
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsUnavailableError
from envelope_mq.shared.kms import Credentials, DedicatedKms, kms_from_settings

pytestmark = pytest.mark.integration

INSTANCE = "kst-hzz6e5d4c3b2a1f0e9d8c7"
KEY_ID = str(uuid.uuid4())
ALIAS = "alias/instance-key"
PRODUCER = ("instance-producer", "instance-producer-secret")
CONSUMER = ("instance-consumer", "instance-consumer-secret")
BIN = Path(sys.executable).parent
CONTEXT = {"tenant": "a"}


def _seed() -> dict[str, object]:
    def principal(creds: tuple[str, str], action: str) -> dict[str, object]:
        return {
            "access_key_id": creds[0],
            "access_key_secret": creds[1],
            "actions": [action],
            "keys": [KEY_ID],
        }

    return {
        "principals": [
            principal(PRODUCER, "GenerateDataKey"),
            principal(CONSUMER, "Decrypt"),
        ],
        "keys": [{"key_id": KEY_ID, "aliases": [ALIAS]}],
        "roles": [
            {
                "arn": "acs:ram::1234567890123456:role/instance-consumer",
                "actions": ["Decrypt"],
                "keys": [KEY_ID],
                "credentials_uri": True,
            }
        ],
    }


@pytest.fixture
def gateway() -> Iterator[Emulator]:
    with Emulator(seed=_seed(), instance_id=INSTANCE, admin=False, port=0) as emu:
        yield emu


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    with throwaway_queue(emq_rabbitmq_url, "instance") as name:
        yield name


def _env(gateway: Emulator, creds: tuple[str, str], home: Path) -> dict[str, str]:
    assert gateway.instance_host is not None
    assert gateway.gateway_proxy is not None
    return {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(home),
        "KMS_INSTANCE_ENDPOINT": f"https://{gateway.instance_host}",
        "KMS_CA_FILE": str(gateway.ca_file),
        "HTTPS_PROXY": gateway.gateway_proxy,
        "KMS_KEY_ID": ALIAS,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": creds[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds[1],
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "envelope-mq"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_produce_and_consume_through_the_instance_gateway_over_verified_tls(
    gateway: Emulator, queue: str, emq_rabbitmq_url: str, tmp_path: Path
) -> None:
    broker = {"RABBITMQ_URL": emq_rabbitmq_url}
    produced = _run(
        ["produce", "--queue", queue, "--context", "tenant=a", "one", "two"],
        _env(gateway, PRODUCER, tmp_path) | broker,
    )
    assert produced.returncode == 0, produced.stderr
    consumed = _run(
        ["consume", "--queue", queue, "--allow-context", "tenant=a", "--count", "2"],
        _env(gateway, CONSUMER, tmp_path) | broker,
    )
    assert consumed.returncode == 0, consumed.stderr
    bodies = [json.loads(line)["body"] for line in consumed.stdout.splitlines()]
    assert bodies == ["one", "two"]
    assert gateway.request_count == {"GenerateDataKey": 1, "Decrypt": 1}


def _settings(gateway: Emulator, creds: tuple[str, str]) -> Settings:
    return Settings.from_env(
        {
            "KMS_INSTANCE_ENDPOINT": f"https://{gateway.instance_host}",
            "KMS_CA_FILE": str(gateway.ca_file),
            "ALIBABA_CLOUD_ACCESS_KEY_ID": creds[0],
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds[1],
        }
    )


def test_the_library_reaches_the_gateway_by_its_own_name(gateway: Emulator) -> None:
    proxy = gateway.gateway_proxy
    producer = kms_from_settings(_settings(gateway, PRODUCER), https_proxy=proxy)
    consumer = kms_from_settings(_settings(gateway, CONSUMER), https_proxy=proxy)
    assert isinstance(producer, DedicatedKms)
    data_key = producer.generate_data_key(ALIAS, CONTEXT)
    assert consumer.decrypt_data_key(data_key.wrapped, CONTEXT).key_id == KEY_ID


def test_the_instance_quota_is_transient_and_retried(tmp_path: Path) -> None:
    # An instance spec far below our calls: 429 Rejected.Throttling, retried
    # with full jitter, and finally transient (the consumer would hold).
    with Emulator(
        seed=_seed(),
        instance_id=INSTANCE,
        instance_qps=1,
        quota_clock=lambda: 0.0,  # frozen: no token comes back during the test
        admin=False,
        port=0,
    ) as emu:
        sleeps: list[float] = []
        client = kms_from_settings(
            _settings(emu, PRODUCER),
            https_proxy=emu.gateway_proxy,
            sleep=sleeps.append,
        )
        client.generate_data_key(ALIAS, CONTEXT)  # the one token of this second
        with pytest.raises(KmsUnavailableError) as caught:
            client.generate_data_key(ALIAS, CONTEXT)
    assert caught.value.code == "Rejected.Throttling"
    assert caught.value.http_status == 429
    assert len(sleeps) == 2


def test_sts_credentials_reach_the_gateway_through_the_current_sdk(
    gateway: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The role's temporary credentials (with their SecurityToken), from the
    # credentials URI, sign the current SDK's requests; the URI is HTTPS too.
    monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca_file))
    proxy = gateway.gateway_proxy
    producer = kms_from_settings(_settings(gateway, PRODUCER), https_proxy=proxy)
    data_key = producer.generate_data_key(ALIAS, CONTEXT)
    role = Credentials.credentials_uri(gateway.credentials_uri("instance-consumer"))
    consumer = DedicatedKms(
        f"https://{gateway.instance_host}",
        role,
        ca_file=str(gateway.ca_file),
        https_proxy=proxy,
    )
    assert role.current().security_token
    assert consumer.decrypt_data_key(data_key.wrapped, CONTEXT).key_id == KEY_ID


def test_seal_and_unseal_through_the_instance_gateway(
    gateway: Emulator, tmp_path: Path
) -> None:
    secret = tmp_path / "report.bin"
    secret.write_bytes(b"quarterly figures\n" * 1000)
    sealed = _run(
        ["seal", str(secret), "--key-id", ALIAS, "--encryption-context", '{"f":"1"}'],
        _env(gateway, PRODUCER, tmp_path),
    )
    assert sealed.returncode == 0, sealed.stderr
    opened = _run(
        [
            "unseal",
            f"{secret}.emq",
            "-o",
            str(tmp_path / "back.bin"),
            "--encryption-context",
            '{"f":"1"}',
        ],
        _env(gateway, CONSUMER, tmp_path),
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "back.bin").read_bytes() == secret.read_bytes()
    assert gateway.request_count == {"GenerateDataKey": 1, "Decrypt": 1}
