"""CreateAlias, UpdateAlias, DeleteAlias, ListAliases, ListAliasesByKeyId."""

from __future__ import annotations

import pytest
from emu_helpers import call, error_of, new_key
from envelope_mq.kms_emulator.service import KmsService

ARN = "acs:kms:cn-hangzhou:1234567890123456"


def test_alias_lifecycle(kms: KmsService, key_id: str) -> None:
    other = new_key(kms)
    assert call(kms, "CreateAlias", AliasName="alias/orders", KeyId=key_id) == {}
    assert call(kms, "Encrypt", KeyId="alias/orders", Plaintext="p")["KeyId"] == key_id
    assert call(kms, "UpdateAlias", AliasName="alias/orders", KeyId=other) == {}
    assert call(kms, "Encrypt", KeyId="alias/orders", Plaintext="p")["KeyId"] == other
    assert call(kms, "ListAliasesByKeyId", KeyId=key_id)["TotalCount"] == 0
    assert call(kms, "DeleteAlias", AliasName="alias/orders") == {}
    exc = error_of(kms, "Encrypt", KeyId="alias/orders", Plaintext="p")
    assert (exc.status, exc.code) == (404, "Forbidden.AliasNotFound")
    assert call(kms, "DescribeKey", KeyId=other)["KeyMetadata"]["KeyState"] == "Enabled"


def test_alias_can_be_created_by_key_arn_and_used_by_alias_arn(
    kms: KmsService, key_id: str
) -> None:
    call(kms, "CreateAlias", AliasName="alias/arn", KeyId=f"{ARN}:key/{key_id}")
    body = call(kms, "DescribeKey", KeyId=f"{ARN}:alias/arn")
    assert body["KeyMetadata"]["KeyId"] == key_id


def test_list_aliases_shape_and_order(kms: KmsService, key_id: str) -> None:
    other = new_key(kms)
    for name, target in (("alias/b", key_id), ("alias/a", other), ("alias/c", key_id)):
        call(kms, "CreateAlias", AliasName=name, KeyId=target)
    body = call(kms, "ListAliases")
    assert body == {
        "Aliases": {
            "Alias": [
                {"AliasName": "alias/a", "AliasArn": f"{ARN}:alias/a", "KeyId": other},
                {"AliasName": "alias/b", "AliasArn": f"{ARN}:alias/b", "KeyId": key_id},
                {"AliasName": "alias/c", "AliasArn": f"{ARN}:alias/c", "KeyId": key_id},
            ]
        },
        "PageNumber": 1,
        "PageSize": 10,
        "TotalCount": 3,
    }
    by_key = call(kms, "ListAliasesByKeyId", KeyId="alias/c")
    assert [a["AliasName"] for a in by_key["Aliases"]["Alias"]] == [
        "alias/b",
        "alias/c",
    ]
    paged = call(kms, "ListAliases", PageNumber="2", PageSize="2")
    assert [a["AliasName"] for a in paged["Aliases"]["Alias"]] == ["alias/c"]


def test_empty_alias_list_keeps_the_nested_shape(kms: KmsService, key_id: str) -> None:
    assert call(kms, "ListAliasesByKeyId", KeyId=key_id)["Aliases"] == {"Alias": []}


def test_a_key_may_have_many_aliases_an_alias_one_key(
    kms: KmsService, key_id: str
) -> None:
    call(kms, "CreateAlias", AliasName="alias/one", KeyId=key_id)
    call(kms, "CreateAlias", AliasName="alias/two", KeyId=key_id)
    exc = error_of(kms, "CreateAlias", AliasName="alias/one", KeyId=new_key(kms))
    assert (exc.status, exc.code) == (400, "AliasAlreadyExists")


@pytest.mark.parametrize(
    "name",
    [
        "orders",
        "alias/",
        "alias/acs/x",
        "alias/acsbad",
        "alias/with space",
        "alias/ü",
        "alias/" + "a" * 256,
        "Alias/x",
    ],
)
def test_invalid_alias_names_are_rejected(
    kms: KmsService, key_id: str, name: str
) -> None:
    exc = error_of(kms, "CreateAlias", AliasName=name, KeyId=key_id)
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert "AliasName" in exc.message


def test_longest_alias_name_is_accepted(kms: KmsService, key_id: str) -> None:
    call(kms, "CreateAlias", AliasName="alias/" + "a/_-" * 63 + "abc", KeyId=key_id)


@pytest.mark.parametrize("action", ["UpdateAlias", "DeleteAlias"])
def test_unknown_alias_is_404(kms: KmsService, key_id: str, action: str) -> None:
    exc = error_of(kms, action, AliasName="alias/none", KeyId=key_id)
    assert (exc.status, exc.code) == (404, "Forbidden.AliasNotFound")


def test_create_alias_for_unknown_key_is_404(kms: KmsService) -> None:
    exc = error_of(
        kms,
        "CreateAlias",
        AliasName="alias/x",
        KeyId="00000000-0000-4000-8000-000000000000",
    )
    assert (exc.status, exc.code) == (404, "Forbidden.KeyNotFound")
