"""Emulator only: the HTTP edge (request shapes, error JSON, keep-alive, limits),
auth modes and the audit log."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from envelope_mq.kms_emulator import Emulator
from kms_clients import (
    FLAVOURS,
    Credentials,
    KmsCallError,
    OpenClient,
    RawHttp,
    acs3_headers,
    admin_seed,
    v1_signed_params,
)

pytestmark = pytest.mark.integration

AK = Credentials("edge-ak", "edge-secret")
KEY_ID = "7d4cf3a2-95a3-4c4e-b6de-0f7f6e1f2a10"
SEED = admin_seed(AK, KEY_ID, "alias/edge")
ERROR_FIELDS = {"RequestId", "HostId", "Code", "Message", "Recommend"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(seed=SEED, auth="strict", admin=False) as emu:
        yield emu


@pytest.fixture
def raw(emulator: Emulator) -> Iterator[RawHttp]:
    connection = RawHttp(emulator.endpoint)
    yield connection
    connection.close()


def _query(params: dict[str, str]) -> str:
    return "/?" + urlencode(params, quote_via=quote)


def test_success_is_json_with_a_request_id(raw: RawHttp) -> None:
    response = raw.v1("DescribeKey", {"KeyId": KEY_ID}, AK)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    body = response.json()
    assert body["RequestId"] == response.headers["x-acs-request-id"]
    assert body["KeyMetadata"]["KeyId"] == KEY_ID


def test_errors_have_the_api_shape(raw: RawHttp) -> None:
    response = raw.v1("DescribeKey", {"KeyId": "alias/none"}, AK)
    assert response.status == 404
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    body = response.json()
    assert set(body) == ERROR_FIELDS
    assert body["Code"] == "Forbidden.AliasNotFound"
    assert body["HostId"] == "kms.cn-hangzhou.aliyuncs.com"


def test_get_is_served_like_post(raw: RawHttp) -> None:
    signed = v1_signed_params("DescribeKey", {"KeyId": KEY_ID}, AK, method="GET")
    response = raw.send("GET", _query(signed))
    assert response.status == 200


def test_api_parameters_may_come_in_a_form_body(raw: RawHttp) -> None:
    # alibabacloud-kms20160120 1.0.x: common parameters in the query, the API's
    # in a form body, one v1 signature over both.
    signed = v1_signed_params("Encrypt", {"KeyId": KEY_ID, "Plaintext": "a b+c"}, AK)
    body = urlencode({"KeyId": KEY_ID, "Plaintext": "a b+c"}).encode()
    common = {k: v for k, v in signed.items() if k not in ("KeyId", "Plaintext")}
    response = raw.send(
        "POST",
        _query(common),
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    blob = response.json()["CiphertextBlob"]
    opened = raw.v1("Decrypt", {"CiphertextBlob": blob}, AK).json()
    assert opened["Plaintext"] == "a b+c"


def test_acs3_takes_the_action_from_the_header(raw: RawHttp) -> None:
    headers = acs3_headers("DescribeKey", {"KeyId": KEY_ID}, b"", AK)
    response = raw.send("POST", _query({"KeyId": KEY_ID}), headers=headers)
    assert response.status == 200
    assert response.json()["KeyMetadata"]["KeyId"] == KEY_ID


def test_a_parameter_given_twice_is_refused(raw: RawHttp) -> None:
    signed = v1_signed_params("DescribeKey", {"KeyId": KEY_ID}, AK)
    response = raw.send("POST", _query(signed) + "&KeyId=alias%2Fedge")
    assert response.status == 400
    assert response.json()["Code"] == "InvalidParameter"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"Version": "2016-01-20"}, "MissingParameter"),
        ({"Action": "DescribeKey"}, "MissingParameter"),
        ({"Action": "DescribeKey", "Version": "2014-05-26"}, "InvalidParameter"),
    ],
    ids=["no-action", "no-version", "other-version"],
)
def test_action_and_version_are_required(
    raw: RawHttp, params: dict[str, str], code: str
) -> None:
    response = raw.send("POST", _query(params))
    assert response.status == 400
    assert response.json()["Code"] == code


def test_an_unknown_action_is_not_found(raw: RawHttp) -> None:
    response = raw.v1("DescribeEverything", {}, AK)
    assert response.status == 400
    assert response.json()["Code"] == "InvalidAction.NotFound"


def test_keep_alive_serves_many_requests_on_one_connection(emulator: Emulator) -> None:
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            target = _query(v1_signed_params("DescribeKey", {"KeyId": KEY_ID}, AK))
            head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            sock.sendall(head.encode() + b"\r\n")
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            body = reader.read(int(headers["content-length"]))
            assert status.startswith(b"HTTP/1.1 200")
            assert headers["connection"] == "keep-alive"
            assert json.loads(body)["KeyMetadata"]["KeyId"] == KEY_ID


def _exchange(emulator: Emulator, request: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes, read the answer until the server closes the connection."""
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"BREW /pot HTTP/1.1\r\n\r\n", 405),
        (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"garbage\r\n\r\n", 400),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET /nothing-here HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
        (b"GET /admin/stats HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    ],
    ids=[
        "huge-body",
        "negative-length",
        "chunked",
        "unknown-method",
        "put",
        "bad-version",
        "bad-request-line",
        "long-url",
        "many-headers",
        "unknown-path",
        "admin-off",
    ],
)
def test_malformed_http_gets_a_json_error(
    emulator: Emulator, request_bytes: bytes, status: int
) -> None:
    answered, body = _exchange(emulator, request_bytes)
    assert answered == status
    assert set(body) == ERROR_FIELDS


def test_healthz_is_always_served(raw: RawHttp) -> None:
    response = raw.send("GET", "/healthz")
    assert (response.status, response.json()) == (200, {"Status": "OK"})


def test_a_request_cut_mid_body_does_not_stop_the_server(
    emulator: Emulator, raw: RawHttp
) -> None:
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nKeyId=")
    assert raw.send("GET", "/healthz").status == 200


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_client_clock_20_minutes_off_is_refused_through_the_sdks(
    flavour: str, open_client: OpenClient
) -> None:
    # The SDKs stamp requests with the real time; the emulator's clock runs ahead.
    with Emulator(seed=SEED, clock=lambda: time.time() + 20 * 60) as emu:
        client = open_client(flavour, emu.endpoint, AK, "cn-hangzhou", "http")
        with pytest.raises(KmsCallError) as caught:
            client.call("DescribeKey", KeyId=KEY_ID)
    assert (caught.value.status, caught.value.code) == (400, "InvalidTimeStamp.Expired")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("offset", [20 * 60, -20 * 60])
def test_clock_offset_makes_every_sdk_client_look_skewed(
    flavour: str, offset: int, open_client: OpenClient
) -> None:
    with Emulator(seed=SEED, clock_offset=offset) as emu:
        client = open_client(flavour, emu.endpoint, AK, "cn-hangzhou", "http")
        with pytest.raises(KmsCallError) as caught:
            client.call("DescribeKey", KeyId=KEY_ID)
    assert (caught.value.status, caught.value.code) == (400, "InvalidTimeStamp.Expired")


def test_clock_offset_can_be_changed_while_running(open_client: OpenClient) -> None:
    with Emulator(seed=SEED) as emu:
        client = open_client("old-sdk-v1", emu.endpoint, AK, "cn-hangzhou", "http")
        client.call("DescribeKey", KeyId=KEY_ID)
        emu.clock_offset = 16 * 60  # just past the 15-minute window
        with pytest.raises(KmsCallError) as caught:
            client.call("DescribeKey", KeyId=KEY_ID)
        emu.clock_offset = 14 * 60  # skewed, but within the window
        client.call("DescribeKey", KeyId=KEY_ID)
    assert caught.value.code == "InvalidTimeStamp.Expired"


def test_auth_off_serves_unsigned_requests() -> None:
    with Emulator(seed=SEED, auth="off") as emu:
        connection = RawHttp(emu.endpoint)
        query = {"Action": "DescribeKey", "Version": "2016-01-20", "KeyId": KEY_ID}
        response = connection.send("GET", _query(query))
        connection.close()
    assert response.status == 200


def test_strict_auth_refuses_unsigned_requests(raw: RawHttp) -> None:
    query = _query({"Action": "DescribeKey", "Version": "2016-01-20", "KeyId": KEY_ID})
    response = raw.send("GET", query)
    assert response.status == 400
    assert response.json()["Code"] == "MissingParameter"


def test_the_audit_log_has_one_line_per_request_and_no_secrets(
    raw: RawHttp, caplog: pytest.LogCaptureFixture
) -> None:
    plaintext = "top-secret-plaintext-value"
    with caplog.at_level(logging.INFO, logger="envelope_mq.kms_emulator.audit"):
        sealed = raw.v1(
            "Encrypt",
            {
                "KeyId": "alias/edge",
                "Plaintext": plaintext,
                "EncryptionContext": '{"t":"x"}',
            },
            AK,
        ).json()
        raw.v1("Decrypt", {"CiphertextBlob": sealed["CiphertextBlob"]}, AK)
        raw.v1("DescribeKey", {"KeyId": "alias/missing"}, AK)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "envelope_mq.kms_emulator.audit"
    ]
    assert len(lines) == 3
    assert f"ak={AK.access_key_id} action=Encrypt key={KEY_ID} result=OK" in lines[0]
    assert "action=Decrypt" in lines[1]
    assert "result=InvalidParameter" in lines[1]  # wrong (absent) context
    assert "result=Forbidden.AliasNotFound status=404" in lines[2]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (plaintext, sealed["CiphertextBlob"], AK.access_key_secret):
        assert secret not in everything


def test_an_internal_failure_is_a_500_json_error_without_parameters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Emulator(seed=SEED) as emu:
        emu.service.close()  # the database is gone: writes fail unexpectedly
        connection = RawHttp(emu.endpoint)
        with caplog.at_level(logging.ERROR, logger="envelope_mq.kms_emulator.server"):
            response = connection.v1(
                "CreateKey", {"Description": "secret-description-text"}, AK
            )
        connection.close()
    assert response.status == 500
    assert set(response.json()) == ERROR_FIELDS
    assert response.json()["Code"] == "InternalFailure"
    assert b"Traceback" not in response.body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "CreateKey" in logged
    assert "secret-description-text" not in logged
