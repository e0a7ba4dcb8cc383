"""Fixtures of the KMS contract suite: "a KMS endpoint", the emulator or the real one.

By default the suite runs against an in-process emulator with strict signatures;
with KMS_CONTRACT_TLS=1 that emulator serves HTTPS under its own generated CA, which
every client verifies (the same tests, over TLS).
With KMS_TARGET=real it runs the same contract tests against Alibaba Cloud KMS:

    KMS_TARGET=real
    ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET   (required)
    KMS_TEST_KEY_ID            an Enabled Aliyun_AES_256 key id      (required)
    ALIBABA_CLOUD_REGION_ID    default cn-hangzhou
    KMS_ENDPOINT               default kms.<region>.aliyuncs.com (https)
    KMS_TEST_CREATE_KEYS=1     allow tests that create keys (scheduled for deletion
                               after 7 days, the shortest window)
    KMS_TEST_PRODUCER_ACCESS_KEY_ID/_SECRET, KMS_TEST_CONSUMER_ACCESS_KEY_ID/_SECRET
                               RAM users allowed only GenerateDataKey / only Decrypt

Emulator-only checks (admin, faults, seeding, persistence, fuzz) build their own
emulators and do not use these fixtures.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from envelope_mq.kms_emulator import Emulator
from kms_clients import (
    FLAVOURS,
    Credentials,
    KmsCallError,
    KmsClient,
    NewKey,
    OpenClient,
    Target,
    make_client,
)

ADMIN = Credentials("contract-admin", "contract-admin-secret")
PRODUCER = Credentials("contract-producer", "contract-producer-secret")
CONSUMER = Credentials("contract-consumer", "contract-consumer-secret")
CONTRACT_KEY_ID = "0b6c2b7e-2a8e-4f5f-9a3e-3a1c0c4f9d21"
CONTRACT_ALIAS = "alias/contract"


def contract_seed() -> dict[str, Any]:
    """Three principals (all, data keys only, decrypt only) and one key."""

    def principal(creds: Credentials, actions: list[str]) -> dict[str, Any]:
        return {
            "access_key_id": creds.access_key_id,
            "access_key_secret": creds.access_key_secret,
            "actions": actions,
            "keys": ["*"],
        }

    return {
        "principals": [
            principal(ADMIN, ["*"]),
            principal(PRODUCER, ["GenerateDataKey", "GenerateDataKeyWithoutPlaintext"]),
            principal(CONSUMER, ["Decrypt"]),
        ],
        "keys": [
            {
                "key_id": CONTRACT_KEY_ID,
                "description": "contract suite key",
                "aliases": [CONTRACT_ALIAS],
            }
        ],
    }


def _real_target() -> Target:
    env = os.environ
    missing = [
        name
        for name in (
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            "KMS_TEST_KEY_ID",
        )
        if not env.get(name)
    ]
    if missing:
        pytest.skip(f"KMS_TARGET=real needs {', '.join(missing)}")
    region = env.get("ALIBABA_CLOUD_REGION_ID", "cn-hangzhou")

    def creds(prefix: str) -> Credentials | None:
        ak, sk = (
            env.get(f"{prefix}_ACCESS_KEY_ID"),
            env.get(f"{prefix}_ACCESS_KEY_SECRET"),
        )
        return Credentials(ak, sk) if ak and sk else None

    endpoint = env.get("KMS_ENDPOINT", f"kms.{region}.aliyuncs.com")
    protocol = "http" if endpoint.startswith("http://") else "https"
    return Target(
        kind="real",
        endpoint=endpoint.removeprefix("https://").removeprefix("http://"),
        protocol=protocol,
        region=region,
        admin=Credentials(
            env["ALIBABA_CLOUD_ACCESS_KEY_ID"], env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
        ),
        key_id=env["KMS_TEST_KEY_ID"],
        producer=creds("KMS_TEST_PRODUCER"),
        consumer=creds("KMS_TEST_CONSUMER"),
        can_create_keys=env.get("KMS_TEST_CREATE_KEYS") == "1",
    )


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    """The KMS endpoint under contract test (see the module docstring)."""
    kind = os.environ.get("KMS_TARGET", "emulator")
    if kind == "real":
        real = _real_target()
        yield real
        real.close()
        return
    if kind != "emulator":
        pytest.fail(f"KMS_TARGET must be 'emulator' or 'real', not {kind!r}")
    tls = os.environ.get("KMS_CONTRACT_TLS") == "1"
    with Emulator(
        seed=contract_seed(), auth="strict", admin=False, tls=tls
    ) as emulator:
        local = Target(
            kind="emulator",
            endpoint=emulator.endpoint,
            protocol=emulator.scheme,
            ca=str(emulator.ca_file) if emulator.ca_file else None,
            region="cn-hangzhou",
            admin=ADMIN,
            key_id=CONTRACT_KEY_ID,
            producer=PRODUCER,
            consumer=CONSUMER,
            emulator=emulator,
        )
        yield local
        local.close()


@pytest.fixture
def open_client() -> Iterator[OpenClient]:
    """make_client(flavour, endpoint, creds, region, protocol, ca), closed after."""
    made: list[KmsClient] = []

    def open_(
        flavour: str,
        endpoint: str,
        creds: Credentials,
        region: str = "cn-hangzhou",
        protocol: str = "http",
        ca: str | None = None,
    ) -> KmsClient:
        made.append(make_client(flavour, endpoint, creds, region, protocol, ca))
        return made[-1]

    yield open_
    for client in made:
        client.close()


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """Each official client flavour in turn."""
    return str(request.param)


@pytest.fixture
def client(target: Target, flavour: str) -> KmsClient:
    """The admin principal's client of the current flavour."""
    return target.client(flavour)


@pytest.fixture
def producer_client(target: Target, flavour: str) -> KmsClient:
    """A principal allowed to generate data keys only."""
    if target.producer is None:
        pytest.skip("no producer credentials (KMS_TEST_PRODUCER_ACCESS_KEY_ID/_SECRET)")
    return target.client(flavour, target.producer)


@pytest.fixture
def consumer_client(target: Target, flavour: str) -> KmsClient:
    """A principal allowed to Decrypt only."""
    if target.consumer is None:
        pytest.skip("no consumer credentials (KMS_TEST_CONSUMER_ACCESS_KEY_ID/_SECRET)")
    return target.client(flavour, target.consumer)


@pytest.fixture
def new_key(target: Target, client: KmsClient) -> Iterator[NewKey]:
    """Create keys through the current client; on the real service they are
    scheduled for deletion afterwards."""
    if not target.can_create_keys:
        pytest.skip("creating keys on the real service needs KMS_TEST_CREATE_KEYS=1")
    created: list[str] = []

    def create(**params: Any) -> str:
        params.setdefault("Description", f"contract test {uuid.uuid4().hex[:8]}")
        key_id = str(client.call("CreateKey", **params)["KeyMetadata"]["KeyId"])
        created.append(key_id)
        return key_id

    yield create
    if target.kind == "real":
        for key_id in created:
            # Already pending deletion if the test scheduled it itself.
            with contextlib.suppress(KmsCallError):
                client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
