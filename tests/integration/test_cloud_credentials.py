"""produce -> consume with temporary credentials from the emulator's STS.

As on Alibaba Cloud: RRSA on ACK (an OIDC token file and three variables, STS
AssumeRoleWithOIDC over verified TLS), a credentials URI, and a consumer that
outlives several of its tokens. No AccessKey anywhere in the services'
environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_kit import throwaway_queue
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.kms_emulator import Emulator
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsCallerError
from envelope_mq.shared.kms import AliyunKms, Credentials

from envelope_mq.testing.oidc import OidcIssuer, role_arn

pytestmark = pytest.mark.integration

KEY_ID = str(uuid.uuid4())
ALIAS = "alias/cloud-credentials"
PRODUCER_ROLE = role_arn("emq-producer")
CONSUMER_ROLE = role_arn("emq-consumer")
PRODUCER_SA = "system:serviceaccount:orders:producer"
CONSUMER_SA = "system:serviceaccount:orders:consumer"
BIN = Path(sys.executable).parent


def _seed(issuer: OidcIssuer) -> dict[str, Any]:
    # Least privilege, as docs/alibaba-cloud.md's RAM policies: the producer's
    # role may only GenerateDataKey, the consumer's only Decrypt, on one key.
    def role(arn: str, action: str, subject: str) -> dict[str, Any]:
        return {
            "arn": arn,
            "actions": [action],
            "keys": [KEY_ID],
            "oidc_provider": issuer.provider_arn,
            "oidc_subjects": [subject],
            "credentials_uri": True,
        }

    return {
        "principals": [],
        "keys": [{"key_id": KEY_ID, "aliases": [ALIAS]}],
        "roles": [
            role(PRODUCER_ROLE, "GenerateDataKey", PRODUCER_SA),
            role(CONSUMER_ROLE, "Decrypt", CONSUMER_SA),
        ],
        "oidc_providers": [issuer.provider_seed()],
    }


@pytest.fixture(scope="module")
def issuer() -> OidcIssuer:
    return OidcIssuer()


@pytest.fixture
def emulator(issuer: OidcIssuer) -> Iterator[Emulator]:
    with Emulator(seed=_seed(issuer), tls=True, admin=False) as emu:
        yield emu


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    # The commands declare durable queues, as a deployment's would be.
    with throwaway_queue(emq_rabbitmq_url, "cloud-creds") as name:
        yield name


def _base_env(emu: Emulator, home: Path, rabbitmq_url: str) -> dict[str, str]:
    """What every pod gets: the endpoints and the CA; no credentials."""
    return {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(home),
        "RABBITMQ_URL": rabbitmq_url,
        "KMS_ENDPOINT": emu.url,
        "KMS_CA_FILE": str(emu.ca_file),
        "KMS_KEY_ID": ALIAS,
        # STS is the emulator too, over HTTPS: named, and its CA trusted by
        # the credential library's HTTP stack through OpenSSL's variable.
        "ALIBABA_CLOUD_STS_ENDPOINT": emu.endpoint,
        "SSL_CERT_FILE": str(emu.ca_file),
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }


def _rrsa_env(
    emu: Emulator, issuer: OidcIssuer, tmp_path: Path, role: str, subject: str
) -> dict[str, str]:
    token = issuer.write_token(
        tmp_path / f"{role.rsplit('/', 1)[1]}.token", subject=subject
    )
    return {
        "ALIBABA_CLOUD_ROLE_ARN": role,
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": issuer.provider_arn,
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE": str(token),
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


def _produce_then_consume(
    producer_env: dict[str, str], consumer_env: dict[str, str], queue: str
) -> list[dict[str, Any]]:
    produced = _run(
        ["produce", "--queue", queue, "--context", "tenant=a", "one", "two"],
        producer_env,
    )
    assert produced.returncode == 0, produced.stderr
    consumed = _run(
        ["consume", "--queue", queue, "--allow-context", "tenant=a", "--count", "2"],
        consumer_env,
    )
    assert consumed.returncode == 0, consumed.stderr
    return [json.loads(line) for line in consumed.stdout.splitlines() if line]


def test_produce_and_consume_with_rrsa_as_ack_injects_it(
    emulator: Emulator,
    issuer: OidcIssuer,
    tmp_path: Path,
    queue: str,
    emq_rabbitmq_url: str,
) -> None:
    base = _base_env(emulator, tmp_path, emq_rabbitmq_url)
    producer = base | _rrsa_env(emulator, issuer, tmp_path, PRODUCER_ROLE, PRODUCER_SA)
    consumer = base | _rrsa_env(emulator, issuer, tmp_path, CONSUMER_ROLE, CONSUMER_SA)

    received = _produce_then_consume(producer, consumer, queue)

    assert [m["body"] for m in received] == ["one", "two"]
    answered = emulator.request_count
    assert answered.get("AssumeRoleWithOIDC", 0) >= 2  # one per service
    assert (answered.get("GenerateDataKey"), answered.get("Decrypt")) == (1, 1)


def test_produce_and_consume_with_a_credentials_uri(
    emulator: Emulator, tmp_path: Path, queue: str, emq_rabbitmq_url: str
) -> None:
    base = _base_env(emulator, tmp_path, emq_rabbitmq_url)
    producer = base | {
        "ALIBABA_CLOUD_CREDENTIALS_URI": emulator.credentials_uri("emq-producer")
    }
    consumer = base | {
        "ALIBABA_CLOUD_CREDENTIALS_URI": emulator.credentials_uri("emq-consumer")
    }

    received = _produce_then_consume(producer, consumer, queue)

    assert [m["body"] for m in received] == ["one", "two"]
    assert emulator.request_count.get("AssumeRoleWithOIDC") is None


def test_a_consumer_outlives_several_of_its_sts_tokens(
    issuer: OidcIssuer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emq_rabbitmq_urls: tuple[str, ...],
    emq_amqp_topology: Topology,
) -> None:
    lifetime = 2.0  # seconds each STS credential lives
    with Emulator(
        seed=_seed(issuer), tls=True, admin=False, sts_lifetime=lifetime
    ) as emu:
        monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_file))

        def kms(role: str, subject: str) -> AliyunKms:
            token = issuer.write_token(
                tmp_path / f"{uuid.uuid4().hex}", subject=subject
            )
            credentials = Credentials.oidc(
                role, issuer.provider_arn, str(token), sts_endpoint=emu.endpoint
            )
            return AliyunKms(
                credentials=credentials, endpoint=emu.url, ca_bundle=str(emu.ca_file)
            )

        settings = Settings(rabbitmq_urls=emq_rabbitmq_urls, kms_key_id=ALIAS)
        producer_kms = kms(PRODUCER_ROLE, PRODUCER_SA)
        consumer_kms = kms(CONSUMER_ROLE, CONSUMER_SA)
        first = consumer_kms.credentials.current()
        received: list[bytes] = []
        done = threading.Event()

        def handler(message: ReceivedMessage) -> None:
            received.append(message.body)
            if len(received) == 4:
                done.set()

        consumer = EncryptedConsumer.from_settings(
            settings, emq_amqp_topology, handler, provider=consumer_kms
        )
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        try:
            for batch in range(4):
                # A fresh publisher each time: a new data key, so the
                # consumer must call Decrypt again, tokens later.
                with EncryptedPublisher.from_settings(
                    settings, topology=emq_amqp_topology, provider=producer_kms
                ) as publisher:
                    publisher.publish(f"batch {batch}".encode()).result(timeout=30)
                time.sleep(lifetime * 1.5)  # the token of the last call expires
            assert done.wait(60)
        finally:
            consumer.stop()
            thread.join(30)
        # The consumer's first token, used now, is refused: it had expired.
        expired = Credentials.static(
            first.access_key_id, first.access_key_secret, first.security_token or ""
        )
        stale = AliyunKms(
            credentials=expired, endpoint=emu.url, ca_bundle=str(emu.ca_file)
        )
        with pytest.raises(KmsCallerError) as caught:
            stale.decrypt_data_key("x", {})
        answered = emu.request_count

    assert sorted(received) == [f"batch {n}".encode() for n in range(4)]
    assert not consumer.stats.quarantined
    # Several tokens were issued to each side over the run...
    assert answered.get("AssumeRoleWithOIDC", 0) >= 6
    # ...and the consumer's first one really had expired meanwhile.
    assert caught.value.code == "InvalidSecurityToken.Expired"


def test_the_kms_command_takes_the_aliyun_clis_credential_modes(
    emulator: Emulator, issuer: OidcIssuer, tmp_path: Path
) -> None:
    token = issuer.write_token(tmp_path / "token", subject=PRODUCER_SA)
    where = ["--endpoint", emulator.url, "--ca-file", str(emulator.ca_file)]
    modes = {
        "OIDC": [
            "--mode",
            "OIDC",
            "--ram-role-arn",
            PRODUCER_ROLE,
            "--oidc-provider-arn",
            issuer.provider_arn,
            "--oidc-token-file",
            str(token),
            "--sts-endpoint",
            emulator.endpoint,
        ],
        "CredentialsURI": [
            "--mode",
            "CredentialsURI",
            "--credentials-uri",
            emulator.credentials_uri("emq-producer"),
        ],
    }
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SSL_CERT_FILE": str(emulator.ca_file),
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }
    for mode, flags in modes.items():
        done = _run(
            [
                "kms",
                "GenerateDataKey",
                "--KeyId",
                ALIAS,
                *where,
                *flags,
                "--query",
                "KeyId",
            ],
            env,
        )
        assert done.returncode == 0, (mode, done.stderr)
        assert json.loads(done.stdout) == KEY_ID
    # The producer's role may not Decrypt: proof the role's credentials signed.
    refused = _run(
        ["kms", "Decrypt", "--CiphertextBlob", "x", *where, *modes["CredentialsURI"]],
        env,
    )
    assert refused.returncode == 1
    assert "Code: Forbidden.NoPermission" in refused.stderr, refused.stderr
