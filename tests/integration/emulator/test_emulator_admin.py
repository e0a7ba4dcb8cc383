"""Emulator only: operator endpoints (reset, rotate, stats) and fault injection."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest
from envelope_mq.kms_emulator import Emulator, Faults
from envelope_mq.kms_emulator.faults import Outcome
from kms_clients import (
    FLAVOURS,
    Credentials,
    KmsCallError,
    KmsTransportError,
    OpenClient,
    RawHttp,
    RawResponse,
    admin_seed,
)

pytestmark = pytest.mark.integration

AK = Credentials("admin-test-ak", "admin-test-secret")
KEY_ID = "3f2b8d1e-6c4a-4f7b-9e2d-5a6b7c8d9e0f"
SEED = admin_seed(AK, KEY_ID, "alias/admin-test")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(seed=SEED, admin=True) as emu:
        yield emu


@pytest.fixture
def raw(emulator: Emulator) -> Iterator[RawHttp]:
    connection = RawHttp(emulator.endpoint)
    connection.admin_token = emulator.admin_token
    yield connection
    connection.close()


def _admin(
    raw: RawHttp,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    data = b"" if body is None else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {raw.admin_token}", **(headers or {})}
    return raw.send(method, path, body=data, headers=sent)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ", "Bearer wrong-token-wrong-token", "Basic abc", "token"],
)
def test_admin_refuses_a_request_without_the_token(
    emulator: Emulator, authorization: str | None
) -> None:
    connection = RawHttp(emulator.endpoint)
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = connection.send("POST", "/admin/reset", headers=headers)
    connection.close()
    assert answer.status == 401
    assert answer.json()["Code"] == "InvalidAdminToken"


def test_admin_refuses_a_cross_origin_request_even_with_the_token(
    raw: RawHttp, emulator: Emulator
) -> None:
    created = raw.v1("CreateKey", {}, AK).json()["KeyMetadata"]["KeyId"]
    for origin in ("https://evil.example", "null", f"http://{emulator.host}:1"):
        answer = _admin(raw, "POST", "/admin/reset", headers={"Origin": origin})
        assert answer.status == 403
        assert answer.json()["Code"] == "Forbidden.AdminOrigin"
    # Nothing was reset: the created key is still there.
    assert raw.v1("DescribeKey", {"KeyId": created}, AK).status == 200
    own = {"Origin": f"http://{emulator.endpoint}"}
    assert _admin(raw, "GET", "/admin/stats", headers=own).status == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1"]
)
def test_admin_refuses_a_foreign_host_header_against_dns_rebinding(
    raw: RawHttp, emulator: Emulator, host: str
) -> None:
    answer = _admin(
        raw, "POST", "/admin/reset", headers={"Host": host.format(port=emulator.port)}
    )
    assert answer.status == 403
    assert answer.json()["Code"] == "Forbidden.AdminHost"


def test_admin_answers_to_the_loopback_names_and_given_hosts() -> None:
    with Emulator(seed=SEED, admin_hosts=["kms-emulator"]) as emu:
        connection = RawHttp(emu.endpoint)
        token = {"Authorization": f"Bearer {emu.admin_token}"}
        statuses = [
            connection.send(
                "GET", "/admin/stats", headers={**token, "Host": f"{name}:{emu.port}"}
            ).status
            for name in ("127.0.0.1", "localhost", "[::1]", "kms-emulator")
        ]
        connection.close()
    assert statuses == [200, 200, 200, 200]


def test_a_given_admin_token_is_used() -> None:
    with Emulator(seed=SEED, admin_token="a-given-token-of-32-characters!!") as emu:
        assert emu.admin_token == "a-given-token-of-32-characters!!"
        connection = RawHttp(emu.endpoint)
        answer = connection.send(
            "GET",
            "/admin/stats",
            headers={"Authorization": f"Bearer {emu.admin_token}"},
        )
        connection.close()
    assert answer.status == 200


def test_each_emulator_makes_its_own_admin_token() -> None:
    with Emulator(seed=SEED) as one, Emulator(seed=SEED) as two:
        assert one.admin_token != two.admin_token
        assert len(one.admin_token) >= 24


def test_reset_drops_created_keys_and_reloads_the_seed(raw: RawHttp) -> None:
    created = raw.v1("CreateKey", {}, AK).json()["KeyMetadata"]["KeyId"]
    raw.v1("DisableKey", {"KeyId": KEY_ID}, AK)
    assert _admin(raw, "POST", "/admin/reset").status == 200
    gone = raw.v1("DescribeKey", {"KeyId": created}, AK)
    assert gone.json()["Code"] == "Forbidden.KeyNotFound"
    seeded = raw.v1("DescribeKey", {"KeyId": "alias/admin-test"}, AK).json()
    assert seeded["KeyMetadata"]["KeyState"] == "Enabled"


def test_rotate_now_adds_a_primary_version_and_old_blobs_still_decrypt(
    raw: RawHttp,
) -> None:
    before = raw.v1("Encrypt", {"KeyId": KEY_ID, "Plaintext": "old"}, AK).json()
    answer = _admin(raw, "POST", "/admin/keys/alias%2Fadmin-test/rotate")
    assert answer.status == 200
    version = answer.json()["KeyVersionId"]
    after = raw.v1("Encrypt", {"KeyId": KEY_ID, "Plaintext": "new"}, AK).json()
    assert after["KeyVersionId"] == version != before["KeyVersionId"]
    opened = raw.v1("Decrypt", {"CiphertextBlob": before["CiphertextBlob"]}, AK)
    assert opened.json()["Plaintext"] == "old"


def test_rotating_an_unknown_key_is_the_api_error(raw: RawHttp) -> None:
    answer = _admin(raw, "POST", "/admin/keys/no-such-key/rotate")
    assert answer.status == 404
    assert answer.json()["Code"] == "Forbidden.KeyNotFound"


def test_stats_count_requests_by_action(emulator: Emulator, raw: RawHttp) -> None:
    assert _admin(raw, "DELETE", "/admin/stats").status == 200
    raw.v1("DescribeKey", {"KeyId": KEY_ID}, AK)
    raw.v1("DescribeKey", {"KeyId": KEY_ID}, AK)
    raw.v1("GenerateDataKey", {"KeyId": KEY_ID}, AK)
    stats = _admin(raw, "GET", "/admin/stats").json()
    assert stats["Requests"] == {"DescribeKey": 2, "GenerateDataKey": 1}
    assert stats["Total"] == 3
    assert emulator.request_count == {"DescribeKey": 2, "GenerateDataKey": 1}


def test_admin_endpoints_check_the_method(raw: RawHttp) -> None:
    answer = _admin(raw, "GET", "/admin/reset")
    assert answer.status == 405
    assert answer.json()["Code"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    "body",
    [
        {"throttle_ratio": 2},
        {"latency_ms": -1},
        {"throttle_ratio": 0.6, "error_ratio": 0.6},
        {"latency_ms": "slow"},
        {"unknown": 1},
        [1, 2],
    ],
)
def test_invalid_fault_settings_are_refused(raw: RawHttp, body: object) -> None:
    answer = _admin(raw, "POST", "/admin/faults", body)
    assert answer.status == 400
    assert answer.json()["Code"] == "InvalidParameter"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_throttling_reaches_the_sdks_as_the_documented_error(
    emulator: Emulator, flavour: str, open_client: OpenClient
) -> None:
    client = open_client(flavour, emulator.endpoint, AK, "cn-hangzhou", "http")
    emulator.faults.set(throttle_ratio=1.0)
    with pytest.raises(KmsCallError) as caught:
        client.call("GenerateDataKey", KeyId=KEY_ID)
    assert (caught.value.status, caught.value.code) == (429, "Rejected.Throttling")
    assert caught.value.message == "QPS Limit Exceeded"
    emulator.faults.clear()
    assert client.call("GenerateDataKey", KeyId=KEY_ID)["KeyId"] == KEY_ID


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_errors_reach_the_sdks_as_http_503(
    emulator: Emulator, flavour: str, open_client: OpenClient
) -> None:
    client = open_client(flavour, emulator.endpoint, AK, "cn-hangzhou", "http")
    emulator.faults.set(error_ratio=1.0)
    with pytest.raises(KmsCallError) as caught:
        client.call("Decrypt", CiphertextBlob="eA==")
    assert (caught.value.status, caught.value.code) == (503, "ServiceUnavailable")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_outage_gives_the_sdks_no_answer_until_cleared(
    emulator: Emulator, raw: RawHttp, flavour: str, open_client: OpenClient
) -> None:
    client = open_client(flavour, emulator.endpoint, AK, "cn-hangzhou", "http")
    client.call("DescribeKey", KeyId=KEY_ID)  # a pooled keep-alive connection too
    assert _admin(raw, "POST", "/admin/faults", {"outage_seconds": 60}).status == 200
    for _ in range(2):
        with pytest.raises(KmsTransportError):
            client.call("DescribeKey", KeyId=KEY_ID)
    # Operators can still see and end it.
    assert raw.send("GET", "/healthz").status == 200
    state = _admin(raw, "GET", "/admin/faults").json()["Faults"]
    assert state["outage_remaining_seconds"] > 0
    assert _admin(raw, "DELETE", "/admin/faults").status == 200
    assert client.call("DescribeKey", KeyId=KEY_ID)["KeyMetadata"]["KeyId"] == KEY_ID


def test_an_outage_ends_by_itself(
    emulator: Emulator, raw: RawHttp, open_client: OpenClient
) -> None:
    emulator.faults.set(outage_seconds=0.2)
    client = open_client("old-sdk-v1", emulator.endpoint, AK, "cn-hangzhou", "http")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.call("DescribeKey", KeyId=KEY_ID)
            break
        except KmsTransportError:
            assert time.monotonic() < deadline, "the outage never ended"
            time.sleep(0.05)
    assert not emulator.faults.in_outage()


def test_latency_leaves_answers_intact(emulator: Emulator, raw: RawHttp) -> None:
    answer = _admin(raw, "POST", "/admin/faults", {"latency_ms": 5, "jitter_ms": 5})
    assert answer.json()["Faults"]["latency_ms"] == 5
    response = raw.v1("DescribeKey", {"KeyId": KEY_ID}, AK)
    assert response.status == 200


def test_fault_draws_follow_the_configured_shares() -> None:
    faults = Faults(rng=random.Random(7))
    faults.set(latency_ms=100, jitter_ms=20, throttle_ratio=0.25, error_ratio=0.25)
    draws = [faults.decide() for _ in range(4000)]
    delays = [delay for delay, _ in draws]
    assert min(delays) >= 0.08
    assert max(delays) <= 0.12
    outcomes = [outcome for _, outcome in draws]
    for outcome in (Outcome.THROTTLE, Outcome.UNAVAILABLE):
        assert 800 < outcomes.count(outcome) < 1200
    assert 1800 < outcomes.count(Outcome.SERVE) < 2200


def test_cleared_faults_serve_everything_at_once() -> None:
    faults = Faults(rng=random.Random(1))
    faults.set(latency_ms=50, throttle_ratio=1.0, outage_seconds=30)
    faults.clear()
    assert {faults.decide() for _ in range(100)} == {(0.0, Outcome.SERVE)}


class FrozenClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_qps_quota_answers_429_rejected_throttling_past_the_quota(
    flavour: str, open_client: OpenClient
) -> None:
    clock = FrozenClock()
    with Emulator(seed=SEED, qps_quota=3, quota_clock=clock) as emu:
        client = open_client(flavour, emu.endpoint, AK, "cn-hangzhou", "http")
        made = [client.call("GenerateDataKey", KeyId=KEY_ID) for _ in range(3)]
        with pytest.raises(KmsCallError) as caught:
            client.call("Decrypt", CiphertextBlob=made[0]["CiphertextBlob"])
        # Key management is not metered by the crypto quota.
        assert client.call("DescribeKey", KeyId=KEY_ID)["KeyMetadata"]
        clock.now += 1.0  # a second later the quota is back
        opened = client.call("Decrypt", CiphertextBlob=made[0]["CiphertextBlob"])
    assert (caught.value.status, caught.value.code) == (429, "Rejected.Throttling")
    assert opened["Plaintext"] == made[0]["Plaintext"]
