"""Contract: key lifecycle, aliases, versions, rotation policy and listings."""

from __future__ import annotations

import re

import pytest
from kms_clients import KmsClient, NewKey, Target, unique_alias

pytestmark = pytest.mark.integration

DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_create_key_answers_its_metadata(client: KmsClient, target: Target) -> None:
    if not target.can_create_keys:
        pytest.skip("creating keys on the real service needs KMS_TEST_CREATE_KEYS=1")
    metadata = client.call("CreateKey", Description="made by the contract suite")[
        "KeyMetadata"
    ]
    try:
        assert metadata["KeyState"] == "Enabled"
        assert metadata["KeySpec"] == "Aliyun_AES_256"
        assert metadata["KeyUsage"] == "ENCRYPT/DECRYPT"
        assert metadata["Origin"] == "Aliyun_KMS"
        assert metadata["Description"] == "made by the contract suite"
        assert metadata["Arn"] == (
            f"acs:kms:{target.region}:{metadata['Creator']}:key/{metadata['KeyId']}"
        )
        assert DATE.fullmatch(metadata["CreationDate"])
        assert UUID.fullmatch(metadata["PrimaryKeyVersion"])
        described = client.call("DescribeKey", KeyId=metadata["KeyId"])["KeyMetadata"]
        assert described["KeyId"] == metadata["KeyId"]
        assert described["PrimaryKeyVersion"] == metadata["PrimaryKeyVersion"]
    finally:
        if target.kind == "real":
            client.call(
                "ScheduleKeyDeletion", KeyId=metadata["KeyId"], PendingWindowInDays=7
            )


@pytest.mark.parametrize(
    ("params", "spec"),
    [({"KeySpec": "Aliyun_AES_128"}, "Aliyun_AES_128"), ({}, "Aliyun_AES_256")],
)
def test_symmetric_key_specs_are_kept(
    client: KmsClient, new_key: NewKey, params: dict[str, str], spec: str
) -> None:
    key_id = new_key(**params)
    assert client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["KeySpec"] == spec
    sealed = client.call("Encrypt", KeyId=key_id, Plaintext="p")
    assert (
        client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])["Plaintext"]
        == "p"
    )


def test_update_key_description(client: KmsClient, new_key: NewKey) -> None:
    key_id = new_key()
    client.call("UpdateKeyDescription", KeyId=key_id, Description="new words")
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert metadata["Description"] == "new words"


def test_list_keys_pages_through_every_key(client: KmsClient, new_key: NewKey) -> None:
    mine = {new_key() for _ in range(3)}
    first = client.call("ListKeys", PageSize=2, PageNumber=1)
    assert (first["PageNumber"], first["PageSize"]) == (1, 2)
    total = first["TotalCount"]
    assert isinstance(total, int)
    assert total >= 3
    seen: list[str] = []
    pages = (total + 99) // 100
    for number in range(1, pages + 1):
        page = client.call("ListKeys", PageSize=100, PageNumber=number)
        for entry in page["Keys"]["Key"]:
            assert entry["KeyArn"].endswith(f":key/{entry['KeyId']}")
            seen.append(entry["KeyId"])
    assert len(seen) == len(set(seen)) == total
    assert mine <= set(seen)


def test_list_keys_filters_by_state(client: KmsClient, new_key: NewKey) -> None:
    disabled = new_key()
    enabled = new_key()
    client.call("DisableKey", KeyId=disabled)
    page = client.call(
        "ListKeys",
        PageSize=100,
        Filters=[{"Key": "KeyState", "Values": ["Disabled"]}],
    )
    found = {entry["KeyId"] for entry in page["Keys"]["Key"]}
    assert disabled in found
    assert enabled not in found


def test_a_page_past_the_end_is_empty(client: KmsClient) -> None:
    page = client.call("ListKeys", PageSize=100, PageNumber=100000)
    assert page["Keys"]["Key"] == []


def test_aliases_can_be_created_moved_listed_and_deleted(
    client: KmsClient, target: Target, new_key: NewKey
) -> None:
    first, second = new_key(), new_key()
    alias = unique_alias()
    client.call("CreateAlias", AliasName=alias, KeyId=first)
    listed = client.call("ListAliasesByKeyId", KeyId=first)["Aliases"]["Alias"]
    assert [a["AliasName"] for a in listed] == [alias]
    assert listed[0]["KeyId"] == first
    assert listed[0]["AliasArn"].endswith(f":{alias}")

    client.call("UpdateAlias", AliasName=alias, KeyId=second)
    assert client.call("Encrypt", KeyId=alias, Plaintext="p")["KeyId"] == second
    assert client.call("ListAliasesByKeyId", KeyId=first)["Aliases"]["Alias"] == []

    everything = client.call("ListAliases", PageSize=100)
    assert everything["TotalCount"] >= 1
    client.call("DeleteAlias", AliasName=alias)
    remaining = client.call("ListAliasesByKeyId", KeyId=second)
    assert remaining["Aliases"]["Alias"] == []
    assert remaining["TotalCount"] == 0
    # The key outlives its alias.
    assert client.call("DescribeKey", KeyId=second)["KeyMetadata"]["KeyId"] == second


def test_a_key_may_have_many_aliases(client: KmsClient, new_key: NewKey) -> None:
    key_id = new_key()
    aliases = sorted(unique_alias() for _ in range(3))
    for alias in aliases:
        client.call("CreateAlias", AliasName=alias, KeyId=key_id)
    listed = client.call("ListAliasesByKeyId", KeyId=key_id, PageSize=2)
    assert listed["TotalCount"] == 3
    assert [a["AliasName"] for a in listed["Aliases"]["Alias"]] == aliases[:2]


def test_key_versions_are_listed_and_described(
    client: KmsClient, target: Target, new_key: NewKey
) -> None:
    if target.kind == "real":
        pytest.skip("CreateKeyVersion is for asymmetric keys on the real service")
    key_id = new_key()
    first = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    second = client.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]
    assert second["KeyId"] == key_id
    assert DATE.fullmatch(second["CreationDate"])
    listed = client.call("ListKeyVersions", KeyId=key_id)
    assert listed["TotalCount"] == 2
    ids = [v["KeyVersionId"] for v in listed["KeyVersions"]["KeyVersion"]]
    assert ids == [first, second["KeyVersionId"]]
    described = client.call("DescribeKeyVersion", KeyId=key_id, KeyVersionId=first)[
        "KeyVersion"
    ]
    assert (described["KeyId"], described["KeyVersionId"]) == (key_id, first)
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert metadata["PrimaryKeyVersion"] == second["KeyVersionId"]


def test_the_first_version_is_listed_for_a_new_key(
    client: KmsClient, new_key: NewKey
) -> None:
    key_id = new_key()
    listed = client.call("ListKeyVersions", KeyId=key_id)
    primary = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert [v["KeyVersionId"] for v in listed["KeyVersions"]["KeyVersion"]] == [
        primary["PrimaryKeyVersion"]
    ]


def test_rotation_policy_shows_in_the_metadata(
    client: KmsClient, new_key: NewKey
) -> None:
    key_id = new_key()
    client.call(
        "UpdateRotationPolicy",
        KeyId=key_id,
        EnableAutomaticRotation=True,
        RotationInterval="7d",
    )
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert metadata["AutomaticRotation"] == "Enabled"
    assert metadata["RotationInterval"] == "604800s"
    assert DATE.fullmatch(metadata["NextRotationDate"])
    client.call("UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation=False)
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert metadata["AutomaticRotation"] == "Disabled"


def test_create_key_with_automatic_rotation(client: KmsClient, new_key: NewKey) -> None:
    key_id = new_key(EnableAutomaticRotation=True, RotationInterval="30d")
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert (metadata["AutomaticRotation"], metadata["RotationInterval"]) == (
        "Enabled",
        "2592000s",
    )


def test_describe_regions_names_the_region(client: KmsClient, target: Target) -> None:
    regions = client.call("DescribeRegions")["Regions"]["Region"]
    assert target.region in {r["RegionId"] for r in regions}
