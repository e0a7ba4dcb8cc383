"""Key versions and rotation: manual, admin and automatic (injected clock)."""

from __future__ import annotations

import pytest
from emu_helpers import DAY, FakeClock, call, error_of, new_key
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.service import KmsService


def versions(kms: KmsService, key_id: str) -> list[str]:
    body = call(kms, "ListKeyVersions", KeyId=key_id, PageSize="100")
    return [v["KeyVersionId"] for v in body["KeyVersions"]["KeyVersion"]]


def test_create_key_version_becomes_primary(
    kms: KmsService, key_id: str, clock: FakeClock
) -> None:
    clock.advance(DAY)
    body = call(kms, "CreateKeyVersion", KeyId=key_id)
    version = body["KeyVersion"]
    assert version["KeyId"] == key_id
    assert version["CreationDate"] == "2026-01-02T00:00:00Z"
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert meta["PrimaryKeyVersion"] == version["KeyVersionId"]
    assert meta["LastRotationDate"] == "2026-01-02T00:00:00Z"
    encrypted = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")
    assert encrypted["KeyVersionId"] == version["KeyVersionId"]


def test_old_blobs_still_decrypt_and_name_their_version(
    kms: KmsService, key_id: str
) -> None:
    old = call(kms, "GenerateDataKey", KeyId=key_id, EncryptionContext='{"c":"1"}')
    new_version = kms.rotate_now(key_id)
    assert new_version != old["KeyVersionId"]
    opened = call(
        kms,
        "Decrypt",
        CiphertextBlob=old["CiphertextBlob"],
        EncryptionContext='{"c":"1"}',
    )
    assert opened["KeyVersionId"] == old["KeyVersionId"]
    assert opened["Plaintext"] == old["Plaintext"]
    fresh = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")
    assert fresh["KeyVersionId"] == new_version


def test_list_and_describe_key_versions(kms: KmsService, key_id: str) -> None:
    first = versions(kms, key_id)
    added = [kms.rotate_now(key_id) for _ in range(11)]
    assert versions(kms, key_id) == first + added
    page = call(kms, "ListKeyVersions", KeyId=key_id)
    assert (
        page["TotalCount"],
        page["PageSize"],
        len(page["KeyVersions"]["KeyVersion"]),
    ) == (
        12,
        10,
        10,
    )
    described = call(kms, "DescribeKeyVersion", KeyId=key_id, KeyVersionId=added[3])
    assert described["KeyVersion"]["KeyVersionId"] == added[3]
    other = new_key(kms)
    exc = error_of(kms, "DescribeKeyVersion", KeyId=other, KeyVersionId=added[3])
    assert (exc.status, exc.code) == (404, "Forbidden.KeyVersionNotFound")


def test_rotate_now_accepts_alias_and_rejects_unknown(
    kms: KmsService, key_id: str
) -> None:
    call(kms, "CreateAlias", AliasName="alias/rot", KeyId=key_id)
    version = kms.rotate_now("alias/rot")
    assert versions(kms, key_id)[-1] == version
    with pytest.raises(ApiError) as info:
        kms.rotate_now("alias/none")
    assert (info.value.status, info.value.code) == (404, "Forbidden.AliasNotFound")


def test_automatic_rotation_happens_when_next_rotation_date_passes(
    kms: KmsService, clock: FakeClock
) -> None:
    key_id = new_key(kms, EnableAutomaticRotation="true", RotationInterval="7d")
    old = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")
    clock.advance(7 * DAY - 1)
    assert len(versions(kms, key_id)) == 1
    clock.advance(1)
    new = call(kms, "Encrypt", KeyId=key_id, Plaintext="q")
    assert new["KeyVersionId"] != old["KeyVersionId"]
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert meta["PrimaryKeyVersion"] == new["KeyVersionId"]
    assert meta["LastRotationDate"] == "2026-01-08T00:00:00Z"
    assert meta["NextRotationDate"] == "2026-01-15T00:00:00Z"
    opened = call(kms, "Decrypt", CiphertextBlob=old["CiphertextBlob"])
    assert (opened["KeyVersionId"], opened["Plaintext"]) == (old["KeyVersionId"], "p")


def test_a_long_pause_rotates_once(kms: KmsService, clock: FakeClock) -> None:
    key_id = new_key(kms, EnableAutomaticRotation="true", RotationInterval="7d")
    clock.advance(100 * DAY)
    call(kms, "DescribeKey", KeyId=key_id)
    assert len(versions(kms, key_id)) == 2


def test_disabled_key_does_not_rotate(kms: KmsService, clock: FakeClock) -> None:
    key_id = new_key(kms, EnableAutomaticRotation="true", RotationInterval="7d")
    call(kms, "DisableKey", KeyId=key_id)
    clock.advance(8 * DAY)
    assert len(versions(kms, key_id)) == 1
    call(kms, "EnableKey", KeyId=key_id)
    assert len(versions(kms, key_id)) == 2


def test_update_rotation_policy_turns_rotation_on_and_off(
    kms: KmsService, key_id: str, clock: FakeClock
) -> None:
    call(
        kms,
        "UpdateRotationPolicy",
        KeyId=key_id,
        EnableAutomaticRotation="True",
        RotationInterval="604800s",
    )
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == (
        "Enabled",
        "604800s",
    )
    call(kms, "UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation="false")
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert meta["AutomaticRotation"] == "Disabled"
    assert "RotationInterval" not in meta
    assert "NextRotationDate" not in meta
    clock.advance(30 * DAY)
    assert len(versions(kms, key_id)) == 1


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "MissingParameter"),
        ({"EnableAutomaticRotation": "true"}, "MissingParameter"),
        ({"EnableAutomaticRotation": "maybe"}, "InvalidParameter"),
        (
            {"EnableAutomaticRotation": "true", "RotationInterval": "6d"},
            "InvalidParameter",
        ),
        (
            {"EnableAutomaticRotation": "true", "RotationInterval": "731d"},
            "InvalidParameter",
        ),
        (
            {"EnableAutomaticRotation": "true", "RotationInterval": "7 d"},
            "InvalidParameter",
        ),
    ],
)
def test_update_rotation_policy_validates(
    kms: KmsService, key_id: str, params: dict[str, str], code: str
) -> None:
    exc = error_of(kms, "UpdateRotationPolicy", KeyId=key_id, **params)
    assert (exc.status, exc.code) == (400, code)


def test_interval_units_are_equivalent(kms: KmsService) -> None:
    for interval in ("7d", "168h", "10080m", "604800s", "604800"):
        meta = call(
            kms, "CreateKey", EnableAutomaticRotation="true", RotationInterval=interval
        )["KeyMetadata"]
        assert meta["RotationInterval"] == "604800s"


def test_external_key_cannot_get_versions(kms: KmsService) -> None:
    key_id = new_key(kms, Origin="EXTERNAL")
    exc = error_of(kms, "CreateKeyVersion", KeyId=key_id)
    assert exc.code == "Rejected.PendingImport"
    exc = error_of(
        kms,
        "UpdateRotationPolicy",
        KeyId=key_id,
        EnableAutomaticRotation="true",
        RotationInterval="7d",
    )
    assert exc.code == "Rejected.PendingImport"
