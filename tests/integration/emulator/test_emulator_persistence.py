"""Emulator only: a restart on the same data directory keeps every key."""

from __future__ import annotations

from pathlib import Path

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.kms_emulator.errors import DataDirLockedError
from kms_clients import Credentials, KmsClient, OpenClient, admin_seed

pytestmark = pytest.mark.integration

AK = Credentials("persist-ak", "persist-secret")
SEED = admin_seed(AK)


def _client(
    open_client: OpenClient, emu: Emulator, flavour: str = "new-sdk-acs3"
) -> KmsClient:
    return open_client(flavour, emu.endpoint, AK)


def test_a_restart_keeps_keys_versions_aliases_and_states(
    tmp_path: Path, open_client: OpenClient
) -> None:
    data = tmp_path / "kms"
    with Emulator(seed=SEED, data=data) as emu:
        kms = _client(open_client, emu)
        kept = kms.call("CreateKey", Description="kept")["KeyMetadata"]["KeyId"]
        disabled = kms.call("CreateKey")["KeyMetadata"]["KeyId"]
        kms.call("CreateAlias", AliasName="alias/kept", KeyId=kept)
        old_blob = kms.call(
            "Encrypt", KeyId=kept, Plaintext="before", EncryptionContext={"a": "b"}
        )["CiphertextBlob"]
        new_version = kms.call("CreateKeyVersion", KeyId=kept)["KeyVersion"]
        new_blob = kms.call("Encrypt", KeyId="alias/kept", Plaintext="after")[
            "CiphertextBlob"
        ]
        kms.call("DisableKey", KeyId=disabled)
        before = kms.call("DescribeKey", KeyId=kept)["KeyMetadata"]

    with Emulator(seed=SEED, data=data) as emu:
        kms = _client(open_client, emu, "old-sdk-v1")
        after = kms.call("DescribeKey", KeyId="alias/kept")["KeyMetadata"]
        assert after == before
        assert after["PrimaryKeyVersion"] == new_version["KeyVersionId"]
        opened = kms.call(
            "Decrypt", CiphertextBlob=old_blob, EncryptionContext={"a": "b"}
        )
        assert opened["Plaintext"] == "before"
        assert kms.call("Decrypt", CiphertextBlob=new_blob)["Plaintext"] == "after"
        state = kms.call("DescribeKey", KeyId=disabled)["KeyMetadata"]["KeyState"]
        assert state == "Disabled"
        versions = kms.call("ListKeyVersions", KeyId=kept)["TotalCount"]
        assert versions == 2


def test_a_second_emulator_cannot_own_the_same_data_directory(
    tmp_path: Path, open_client: OpenClient
) -> None:
    data = tmp_path / "kms"
    with Emulator(seed=SEED, data=data), pytest.raises(DataDirLockedError):
        Emulator(seed=SEED, data=data).start()
    # Released on stop: the directory can be owned again.
    with Emulator(seed=SEED, data=data) as emu:
        assert _client(open_client, emu).call("DescribeRegions")["Regions"]["Region"]


def test_the_root_key_file_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KMS_EMULATOR_ROOT_KEY", raising=False)
    data = tmp_path / "kms"
    with Emulator(seed=SEED, data=data):
        pass
    assert (data / "root.key").stat().st_mode & 0o777 == 0o600
