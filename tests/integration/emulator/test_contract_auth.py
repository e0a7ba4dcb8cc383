"""Contract: authentication (signatures, timestamps, nonces) and authorization.

Through the real SDKs where an SDK can be made to do it (a wrong secret, an
unknown AccessKeyId, a principal without the right), over raw signed HTTP where
it cannot (an old timestamp, a replayed nonce, a tampered body).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from kms_clients import (
    Credentials,
    KmsCallError,
    KmsClient,
    OpenClient,
    RawHttp,
    Target,
    acs3_headers,
    utc_timestamp,
    v1_signed_params,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def raw(target: Target) -> Iterator[RawHttp]:
    connection = target.raw()
    yield connection
    connection.close()


def test_a_wrong_secret_is_a_signature_mismatch(
    target: Target, flavour: str, open_client: OpenClient
) -> None:
    impostor = Credentials(target.admin.access_key_id, "not-the-secret")
    client = open_client(
        flavour, target.endpoint, impostor, target.region, target.protocol, target.ca
    )
    with pytest.raises(KmsCallError) as caught:
        client.call("DescribeKey", KeyId=target.key_id)
    assert caught.value.status == 400
    if flavour == "old-sdk-v1":
        # The old SDK renames the error when the server's StringToSign (after
        # the ":" of the Message) equals its own: proof both computed the same.
        assert caught.value.code == "InvalidAccessKeySecret"
    else:
        assert caught.value.code == "SignatureDoesNotMatch"
        assert ":" in caught.value.message


def test_an_unknown_access_key_is_not_found(
    target: Target, flavour: str, open_client: OpenClient
) -> None:
    stranger = Credentials("no-such-access-key-id", "whatever")
    client = open_client(
        flavour, target.endpoint, stranger, target.region, target.protocol, target.ca
    )
    with pytest.raises(KmsCallError) as caught:
        client.call("DescribeKey", KeyId=target.key_id)
    assert (caught.value.status, caught.value.code) == (
        404,
        "InvalidAccessKeyId.NotFound",
    )


def test_a_correctly_signed_raw_request_is_served(target: Target, raw: RawHttp) -> None:
    response = raw.v1("DescribeKey", {"KeyId": target.key_id}, target.admin)
    assert response.status == 200
    assert response.json()["KeyMetadata"]["KeyId"] == target.key_id


@pytest.mark.parametrize("offset", [-20 * 60, 20 * 60], ids=["past", "future"])
def test_a_timestamp_more_than_15_minutes_off_is_refused(
    target: Target, raw: RawHttp, offset: int
) -> None:
    response = raw.v1(
        "DescribeKey",
        {"KeyId": target.key_id},
        target.admin,
        timestamp=utc_timestamp(offset),
    )
    assert response.status == 400
    assert response.json()["Code"] == "InvalidTimeStamp.Expired"


def test_a_timestamp_within_the_window_is_accepted(
    target: Target, raw: RawHttp
) -> None:
    response = raw.v1(
        "DescribeKey",
        {"KeyId": target.key_id},
        target.admin,
        timestamp=utc_timestamp(-10 * 60),
    )
    assert response.status == 200


def test_a_malformed_timestamp_is_refused(target: Target, raw: RawHttp) -> None:
    response = raw.v1(
        "DescribeKey",
        {"KeyId": target.key_id},
        target.admin,
        timestamp="29/11/2026 03:04:05",
    )
    assert response.status == 400
    assert response.json()["Code"] == "IllegalTimestamp"


def test_a_replayed_v1_request_is_refused(target: Target, raw: RawHttp) -> None:
    signed = v1_signed_params("DescribeKey", {"KeyId": target.key_id}, target.admin)
    request = "/?" + urlencode(signed, quote_via=quote)
    assert raw.send("POST", request).status == 200
    replay = raw.send("POST", request)
    assert replay.status == 400
    assert replay.json()["Code"] == "SignatureNonceUsed"


def test_a_replayed_acs3_request_is_refused(target: Target, raw: RawHttp) -> None:
    query = {"KeyId": target.key_id}
    headers = acs3_headers("DescribeKey", query, b"", target.admin)
    target_url = "/?" + urlencode(query, quote_via=quote)
    assert raw.send("POST", target_url, headers=headers).status == 200
    replay = raw.send("POST", target_url, headers=headers)
    assert replay.status == 400
    assert replay.json()["Code"] == "SignatureNonceUsed"


def test_an_acs3_body_altered_after_signing_is_refused(
    target: Target, raw: RawHttp
) -> None:
    signed_body = b"KeyId=" + target.key_id.encode()
    headers = acs3_headers("DescribeKey", {}, signed_body, target.admin)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    response = raw.send("POST", "/", body=b"KeyId=alias%2Fother", headers=headers)
    assert response.status == 400
    assert response.json()["Code"] == "SignatureDoesNotMatch"


def test_an_acs3_signature_must_cover_the_action(target: Target, raw: RawHttp) -> None:
    headers = acs3_headers("DescribeKey", {"KeyId": target.key_id}, b"", target.admin)
    headers["x-acs-action"] = "ScheduleKeyDeletion"  # unsigned, swapped in flight
    response = raw.send(
        "POST", "/?" + urlencode({"KeyId": target.key_id}), headers=headers
    )
    assert response.status == 400
    assert response.json()["Code"] == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "dropped", ["Signature", "AccessKeyId", "SignatureNonce", "Timestamp"]
)
def test_a_request_missing_a_signature_part_is_refused(
    target: Target, raw: RawHttp, dropped: str
) -> None:
    signed = v1_signed_params("DescribeKey", {"KeyId": target.key_id}, target.admin)
    del signed[dropped]
    response = raw.send("POST", "/?" + urlencode(signed, quote_via=quote))
    assert response.status == 400
    assert response.json()["Code"] in ("MissingParameter", "IncompleteSignature")


def test_an_unsigned_request_is_refused(target: Target, raw: RawHttp) -> None:
    query = urlencode(
        {"Action": "DescribeKey", "Version": "2016-01-20", "KeyId": target.key_id}
    )
    response = raw.send("POST", "/?" + query)
    assert response.status in (400, 403, 404)
    assert "Code" in response.json()


def test_the_producer_may_generate_data_keys_but_not_decrypt(
    producer_client: KmsClient, target: Target
) -> None:
    data_key = producer_client.call("GenerateDataKey", KeyId=target.key_id)
    with pytest.raises(KmsCallError) as caught:
        producer_client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])
    assert (caught.value.status, caught.value.code) == (403, "Forbidden.NoPermission")


def test_the_consumer_may_decrypt_but_not_generate_data_keys(
    producer_client: KmsClient, consumer_client: KmsClient, target: Target
) -> None:
    data_key = producer_client.call(
        "GenerateDataKey", KeyId=target.key_id, EncryptionContext={"q": "orders"}
    )
    opened = consumer_client.call(
        "Decrypt",
        CiphertextBlob=data_key["CiphertextBlob"],
        EncryptionContext={"q": "orders"},
    )
    assert opened["Plaintext"] == data_key["Plaintext"]
    for action, params in (
        ("GenerateDataKey", {}),
        ("GenerateDataKeyWithoutPlaintext", {}),
        ("Encrypt", {"Plaintext": "p"}),
    ):
        with pytest.raises(KmsCallError) as caught:
            consumer_client.call(action, KeyId=target.key_id, **params)
        assert (caught.value.status, caught.value.code) == (
            403,
            "Forbidden.NoPermission",
        )


def test_a_principal_may_call_only_its_actions(
    consumer_client: KmsClient, target: Target
) -> None:
    for action in ("DescribeKey", "DisableKey", "ScheduleKeyDeletion"):
        params = {"KeyId": target.key_id}
        if action == "ScheduleKeyDeletion":
            params["PendingWindowInDays"] = "7"
        with pytest.raises(KmsCallError) as caught:
            consumer_client.call(action, **params)
        assert (caught.value.status, caught.value.code) == (
            403,
            "Forbidden.NoPermission",
        )


@pytest.mark.parametrize(
    "authorization",
    [
        "ACS3-HMAC-SHA256 garbage",
        "ACS3-HMAC-SHA256 Credential=x,SignedHeaders=host,Signature=00",
        "AWS4-HMAC-SHA256 Credential=x/y, SignedHeaders=host, Signature=00",
    ],
    ids=["unparsable", "date-and-nonce-unsigned", "other-scheme"],
)
def test_a_malformed_authorization_header_is_an_incomplete_signature(
    target: Target, raw: RawHttp, authorization: str
) -> None:
    headers = acs3_headers("DescribeKey", {"KeyId": target.key_id}, b"", target.admin)
    headers["Authorization"] = authorization
    response = raw.send(
        "POST", "/?" + urlencode({"KeyId": target.key_id}), headers=headers
    )
    assert response.status == 400
    assert response.json()["Code"] == "IncompleteSignature"


def test_an_unsupported_v1_signature_method_is_an_incomplete_signature(
    target: Target, raw: RawHttp
) -> None:
    signed = v1_signed_params("DescribeKey", {"KeyId": target.key_id}, target.admin)
    signed["SignatureMethod"] = "HMAC-MD5"
    response = raw.send("POST", "/?" + urlencode(signed, quote_via=quote))
    assert response.status == 400
    assert response.json()["Code"] == "IncompleteSignature"
