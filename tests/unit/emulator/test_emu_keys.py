"""CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, DescribeRegions, dispatch."""

from __future__ import annotations

import json
from typing import Any

import pytest
from emu_helpers import DAY, FakeClock, call, error_of, new_key
from envelope_mq.kms_emulator.service import KmsService

ACCOUNT = "1234567890123456"


def test_create_key_answers_full_key_metadata(kms: KmsService) -> None:
    meta = call(kms, "CreateKey", Description="orders")["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta == {
        "KeyId": key_id,
        "Arn": f"acs:kms:cn-hangzhou:{ACCOUNT}:key/{key_id}",
        "KeyState": "Enabled",
        "CreationDate": "2026-01-01T00:00:00Z",
        "Creator": ACCOUNT,
        "Description": "orders",
        "KeyUsage": "ENCRYPT/DECRYPT",
        "KeySpec": "Aliyun_AES_256",
        "Origin": "Aliyun_KMS",
        "ProtectionLevel": "SOFTWARE",
        "PrimaryKeyVersion": meta["PrimaryKeyVersion"],
        "DeleteDate": "",
        "MaterialExpireTime": "",
        "AutomaticRotation": "Disabled",
        "LastRotationDate": "2026-01-01T00:00:00Z",
        "DeletionProtection": "Disabled",
        "DeletionProtectionDescription": "",
    }
    assert len(meta["PrimaryKeyVersion"]) == 36
    assert call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"] == meta


def test_aes_128_key_encrypts_and_decrypts(kms: KmsService) -> None:
    key_id = new_key(kms, KeySpec="Aliyun_AES_128", ProtectionLevel="HSM")
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert (meta["KeySpec"], meta["ProtectionLevel"]) == ("Aliyun_AES_128", "HSM")
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    assert call(kms, "Decrypt", CiphertextBlob=blob)["Plaintext"] == "p"


def test_create_key_with_rotation_reports_interval_in_seconds(kms: KmsService) -> None:
    meta = call(
        kms, "CreateKey", EnableAutomaticRotation="True", RotationInterval="30d"
    )["KeyMetadata"]
    assert meta["AutomaticRotation"] == "Enabled"
    assert meta["RotationInterval"] == "2592000s"
    assert meta["NextRotationDate"] == "2026-01-31T00:00:00Z"


def test_create_key_rotation_defaults_to_a_year(kms: KmsService) -> None:
    meta = call(kms, "CreateKey", EnableAutomaticRotation="TRUE")["KeyMetadata"]
    assert meta["RotationInterval"] == "31536000s"


@pytest.mark.parametrize("spec", ["RSA_2048", "EC_P256", "EC_SM2", "Aliyun_SM4"])
def test_asymmetric_or_unemulated_key_spec_is_unsupported(
    kms: KmsService, spec: str
) -> None:
    exc = error_of(kms, "CreateKey", KeySpec=spec)
    assert (exc.status, exc.code) == (400, "Rejected.UnsupportedOperation")
    assert spec in exc.message


def test_sign_verify_usage_is_unsupported(kms: KmsService) -> None:
    exc = error_of(kms, "CreateKey", KeyUsage="SIGN/VERIFY")
    assert (exc.status, exc.code) == (400, "Rejected.UnsupportedOperation")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KeySpec", "AES_256"),
        ("KeyUsage", "ENCRYPT"),
        ("Origin", "HSM"),
        ("ProtectionLevel", "software"),
        ("EnableAutomaticRotation", "1"),
        ("RotationInterval", "6d"),
        ("RotationInterval", "366d"),
        ("RotationInterval", "1y"),
        ("Description", "d" * 8193),
        ("Tags", '{"TagKey":"a"}'),
        ("Tags", "[1]"),
        ("Tags", "not json"),
    ],
)
def test_create_key_rejects_invalid_parameters(
    kms: KmsService, name: str, value: str
) -> None:
    exc = error_of(kms, "CreateKey", **{name: value})
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert name in exc.message


def test_create_key_accepts_tags(kms: KmsService) -> None:
    tags = json.dumps([{"TagKey": "team", "TagValue": "orders"}])
    assert new_key(kms, Tags=tags)


def test_external_key_starts_pending_import_without_material(kms: KmsService) -> None:
    meta = call(kms, "CreateKey", Origin="EXTERNAL")["KeyMetadata"]
    assert (meta["KeyState"], meta["Origin"], meta["PrimaryKeyVersion"]) == (
        "PendingImport",
        "EXTERNAL",
        "",
    )
    exc = error_of(kms, "CreateKey", Origin="EXTERNAL", EnableAutomaticRotation="true")
    assert (exc.status, exc.code) == (400, "Unsupported.Origin")


def test_describe_key_needs_key_id(kms: KmsService) -> None:
    exc = error_of(kms, "DescribeKey")
    assert (exc.status, exc.code) == (400, "MissingParameter")
    assert exc.message == 'The parameter "KeyId" is needed but not provided.'


def test_update_key_description_may_clear_it(kms: KmsService, key_id: str) -> None:
    call(kms, "UpdateKeyDescription", KeyId=key_id, Description="")
    assert call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]["Description"] == ""
    exc = error_of(kms, "UpdateKeyDescription", KeyId=key_id)
    assert exc.code == "MissingParameter"


def test_list_keys_pages_oldest_first(kms: KmsService, clock: FakeClock) -> None:
    created = []
    for _ in range(25):
        created.append(new_key(kms))
        clock.advance(1)
    first = call(kms, "ListKeys")
    assert (first["PageNumber"], first["PageSize"], first["TotalCount"]) == (1, 10, 25)
    assert [k["KeyId"] for k in first["Keys"]["Key"]] == created[:10]
    third = call(kms, "ListKeys", PageNumber="3", PageSize="10")
    assert [k["KeyId"] for k in third["Keys"]["Key"]] == created[20:]
    assert third["Keys"]["Key"][0]["KeyArn"].endswith(f":key/{created[20]}")
    beyond = call(kms, "ListKeys", PageNumber="9")
    assert beyond["Keys"] == {"Key": []}
    assert beyond["TotalCount"] == 25
    everything = call(kms, "ListKeys", PageSize="100")
    assert [k["KeyId"] for k in everything["Keys"]["Key"]] == created


def test_empty_list_keys_keeps_the_nested_shape(kms: KmsService) -> None:
    assert call(kms, "ListKeys") == {
        "Keys": {"Key": []},
        "PageNumber": 1,
        "PageSize": 10,
        "TotalCount": 0,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [("PageNumber", "0"), ("PageSize", "0"), ("PageSize", "101"), ("PageSize", "a")],
)
def test_list_keys_rejects_bad_paging(kms: KmsService, name: str, value: str) -> None:
    exc = error_of(kms, "ListKeys", **{name: value})
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_list_keys_filters_or_within_values_and_across_keys(kms: KmsService) -> None:
    enabled = new_key(kms)
    disabled = new_key(kms)
    call(kms, "DisableKey", KeyId=disabled)
    small = new_key(kms, KeySpec="Aliyun_AES_128")

    def ids(filters: list[dict[str, Any]]) -> set[str]:
        body = call(kms, "ListKeys", Filters=json.dumps(filters), PageSize="100")
        return {k["KeyId"] for k in body["Keys"]["Key"]}

    assert ids([{"Key": "KeyState", "Values": ["Disabled"]}]) == {disabled}
    assert ids([{"Key": "KeyState", "Values": ["Enabled", "Disabled"]}]) == {
        enabled,
        disabled,
        small,
    }
    both = [
        {"Key": "KeyState", "Values": ["Enabled"]},
        {"Key": "KeySpec", "Values": ["Aliyun_AES_128"]},
    ]
    assert ids(both) == {small}
    assert ids([{"Key": "CreatorType", "Values": ["Service"]}]) == set()


@pytest.mark.parametrize(
    "filters",
    [
        "{}",
        '[{"Key":"Color","Values":["red"]}]',
        '[{"Key":"KeyState","Values":"Enabled"}]',
        '[{"Key":"KeyState"}]',
        '[{"Key":"KeyState","Values":[1]}]',
        "[",
    ],
)
def test_list_keys_rejects_malformed_filters(kms: KmsService, filters: str) -> None:
    exc = error_of(kms, "ListKeys", Filters=filters)
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert "Filters" in exc.message


def test_describe_regions_names_the_region(kms: KmsService) -> None:
    assert call(kms, "DescribeRegions") == {
        "Regions": {"Region": [{"RegionId": "cn-hangzhou"}]}
    }


def test_region_and_account_shape_arns(clock: FakeClock) -> None:
    with KmsService.open(region_id="eu-central-1", account_id="42", clock=clock) as kms:
        meta = call(kms, "CreateKey")["KeyMetadata"]
        assert meta["Arn"] == f"acs:kms:eu-central-1:42:key/{meta['KeyId']}"
        assert call(kms, "Encrypt", KeyId=meta["Arn"], Plaintext="p")


def test_unknown_action_is_invalid_action(kms: KmsService) -> None:
    exc = error_of(kms, "GetSecretValue")
    assert (exc.status, exc.code) == (400, "InvalidAction.NotFound")
    assert error_of(kms, "encrypt").code == "InvalidAction.NotFound"


def test_every_date_has_the_api_form(kms: KmsService, clock: FakeClock) -> None:
    clock.advance(DAY + 3723.9)
    meta = call(kms, "CreateKey")["KeyMetadata"]
    assert meta["CreationDate"] == "2026-01-02T01:02:03Z"
