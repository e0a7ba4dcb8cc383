"""Emulator only: the dedicated-gateway mode of a KMS 3.0 instance.

Clients name the real host, ``<instance-id>.cryptoservice.kms.aliyuncs.com``,
and verify the certificate against it; the SDKs' own HTTPS-proxy option sends
them through the emulator's CONNECT tunnel, which alone resolves that name
(no /etc/hosts, no DNS).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.shared.errors import KmsRequestError, KmsUnavailableError
from envelope_mq.shared.kms import AliyunKms
from kms_clients import (
    Credentials,
    KmsCallError,
    KmsClient,
    NewSdkClient,
    admin_seed,
)

pytestmark = pytest.mark.integration

AK = Credentials("gateway-ak", "gateway-secret")
KEY_ID = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
INSTANCE = "kst-hzz6a1b2c3d4e5f6g7h8"
HOST = f"{INSTANCE}.cryptoservice.kms.aliyuncs.com"


class FrozenClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def gateway(clock: FrozenClock) -> Iterator[Emulator]:
    with Emulator(
        seed=admin_seed(AK, KEY_ID, "alias/gw"),
        instance_id=INSTANCE,
        instance_qps=4,
        quota_clock=clock,
    ) as emu:
        yield emu


def _new_sdk(emu: Emulator, *, v1: bool = False) -> KmsClient:
    """alibabacloud-kms20160120 as one configures it for an instance, plus
    the proxy that stands in for the VPC's DNS."""
    return NewSdkClient(
        HOST,
        AK,
        "cn-hangzhou",
        "https",
        v1=v1,
        ca=str(emu.ca_file),
        https_proxy=emu.gateway_proxy,
    )


@pytest.fixture(params=["acs3", "v1"])
def client(request: pytest.FixtureRequest, gateway: Emulator) -> KmsClient:
    return _new_sdk(gateway, v1=request.param == "v1")


def test_the_data_plane_works_through_the_instance_host_name(
    client: KmsClient,
) -> None:
    made = client.call("GenerateDataKey", KeyId="alias/gw")
    opened = client.call("Decrypt", CiphertextBlob=made["CiphertextBlob"])
    assert opened["Plaintext"] == made["Plaintext"]
    assert opened["KeyId"] == KEY_ID


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("CreateKey", {}),
        ("DescribeKey", {"KeyId": KEY_ID}),
        ("ListKeys", {}),
        ("ScheduleKeyDeletion", {"KeyId": KEY_ID, "PendingWindowInDays": 7}),
        ("CreateAlias", {"KeyId": KEY_ID, "AliasName": "alias/more"}),
        ("ReEncrypt", {"CiphertextBlob": "AAAA", "DestinationKeyId": KEY_ID}),
    ],
)
def test_key_management_and_re_encrypt_are_refused(
    client: KmsClient, gateway: Emulator, action: str, params: dict[str, Any]
) -> None:
    with pytest.raises(KmsCallError) as caught:
        client.call(action, **params)
    assert (caught.value.status, caught.value.code) == (
        400,
        "Rejected.UnsupportedOperation",
    )
    assert gateway.service.call("DescribeKey", {"KeyId": KEY_ID}, None)  # intact


def test_over_the_instance_quota_the_answer_is_429_rejected_throttling(
    client: KmsClient, clock: FrozenClock
) -> None:
    for _ in range(4):
        client.call("GenerateDataKey", KeyId=KEY_ID)
    with pytest.raises(KmsCallError) as caught:
        client.call("GenerateDataKey", KeyId=KEY_ID)
    assert (caught.value.status, caught.value.code) == (429, "Rejected.Throttling")
    clock.now += 0.5  # half a second of a 4-QPS quota: two more
    client.call("GenerateDataKey", KeyId=KEY_ID)
    client.call("GenerateDataKey", KeyId=KEY_ID)
    with pytest.raises(KmsCallError):
        client.call("GenerateDataKey", KeyId=KEY_ID)


def test_the_account_quota_and_the_instance_quota_both_apply(
    clock: FrozenClock,
) -> None:
    with Emulator(
        seed=admin_seed(AK, KEY_ID),
        instance_id=INSTANCE,
        instance_qps=100,
        qps_quota=2,
        quota_clock=clock,
    ) as emu:
        client = _new_sdk(emu)
        client.call("Encrypt", KeyId=KEY_ID, Plaintext="YQ==")
        client.call("Encrypt", KeyId=KEY_ID, Plaintext="YQ==")
        with pytest.raises(KmsCallError) as caught:
            client.call("Encrypt", KeyId=KEY_ID, Plaintext="YQ==")
    assert caught.value.code == "Rejected.Throttling"


def test_aliyun_kms_reaches_the_gateway_with_its_ca_and_the_proxy(
    gateway: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aliyun-python-sdk-core takes its proxy from HTTPS_PROXY.
    assert gateway.gateway_proxy is not None
    monkeypatch.setenv("HTTPS_PROXY", gateway.gateway_proxy)
    with AliyunKms(
        AK.access_key_id,
        AK.access_key_secret,
        endpoint=f"https://{HOST}",
        ca_bundle=str(gateway.ca_file),
        max_attempts=1,
    ) as kms:
        data_key = kms.generate_data_key("alias/gw", {"tenant": "a"})
        assert kms.decrypt_data_key(data_key.wrapped, {"tenant": "a"}).plaintext == (
            data_key.plaintext
        )
        with pytest.raises(KmsRequestError) as caught:
            kms.call("DescribeKey", {"KeyId": KEY_ID})
    assert caught.value.code == "Rejected.UnsupportedOperation"


def test_the_instance_certificate_is_verified_against_the_host_name(
    gateway: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tunnel only knows the instance host; a certificate for another
    # name (here: the loopback address) would fail verification.
    assert gateway.gateway_proxy is not None
    monkeypatch.setenv("HTTPS_PROXY", gateway.gateway_proxy)
    other = "kst-hzzotherinstance0000.cryptoservice.kms.aliyuncs.com"
    with (
        AliyunKms(
            AK.access_key_id,
            AK.access_key_secret,
            endpoint=f"https://{other}",
            ca_bundle=str(gateway.ca_file),
            max_attempts=1,
        ) as kms,
        pytest.raises(KmsUnavailableError),
    ):
        kms.generate_data_key("alias/gw", {})
    assert gateway.request_count == {}


def test_the_tunnel_is_no_open_proxy(gateway: Emulator) -> None:
    assert gateway.gateway_proxy is not None
    host, port = gateway.gateway_proxy.removeprefix("http://").split(":")
    answers = []
    for target in (b"example.com:443", b"127.0.0.1:22", HOST.encode() + b":443"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
            answers.append(sock.recv(64).split(b"\r\n")[0])
    assert answers == [
        b"HTTP/1.1 403 Forbidden",
        b"HTTP/1.1 403 Forbidden",
        b"HTTP/1.1 200 Connection Established",
    ]


def test_an_instance_id_implies_tls_and_names_the_host() -> None:
    with Emulator(seed=admin_seed(AK), instance_id=INSTANCE) as emu:
        assert emu.scheme == "https"
        assert emu.instance_host == HOST
        assert emu.ca_file is not None
    with pytest.raises(ValueError, match="instance id"):
        Emulator(instance_id="not-an-instance")
