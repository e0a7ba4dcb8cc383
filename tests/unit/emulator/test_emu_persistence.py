"""SQLite persistence: restart keeps state; one owner; root key; no clear material."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from emu_helpers import FakeClock, call, new_key
from envelope_mq.kms_emulator.errors import DataDirLockedError, StorageError
from envelope_mq.kms_emulator.service import KmsService
from envelope_mq.kms_emulator.storage import ROOT_KEY_ENV

SEED_MATERIAL = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_root_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_KEY_ENV, raising=False)


def test_restart_keeps_keys_versions_aliases_states_and_policies(
    tmp_path: Path, clock: FakeClock
) -> None:
    with KmsService.open(tmp_path, clock=clock) as kms:
        key_id = new_key(kms, Description="kept")
        gdk = call(kms, "GenerateDataKey", KeyId=key_id, EncryptionContext='{"a":"b"}')
        rotated = kms.rotate_now(key_id)
        call(kms, "CreateAlias", AliasName="alias/kept", KeyId=key_id)
        call(
            kms,
            "UpdateRotationPolicy",
            KeyId=key_id,
            EnableAutomaticRotation="true",
            RotationInterval="30d",
        )
        disabled = new_key(kms)
        call(kms, "DisableKey", KeyId=disabled)
        doomed = new_key(kms)
        call(kms, "ScheduleKeyDeletion", KeyId=doomed, PendingWindowInDays="7")
        before = {
            k: call(kms, "DescribeKey", KeyId=k) for k in (key_id, disabled, doomed)
        }
    with KmsService.open(tmp_path, clock=clock) as kms:
        after = {
            k: call(kms, "DescribeKey", KeyId=k) for k in (key_id, disabled, doomed)
        }
        assert after == before
        assert after[key_id]["KeyMetadata"]["PrimaryKeyVersion"] == rotated
        assert call(kms, "ListAliases")["Aliases"]["Alias"][0]["KeyId"] == key_id
        opened = call(
            kms,
            "Decrypt",
            CiphertextBlob=gdk["CiphertextBlob"],
            EncryptionContext='{"a":"b"}',
        )
        assert opened["Plaintext"] == gdk["Plaintext"]
        assert (
            call(kms, "Encrypt", KeyId="alias/kept", Plaintext="p")["KeyVersionId"]
            == rotated
        )


def test_second_owner_of_a_data_directory_is_refused(tmp_path: Path) -> None:
    with KmsService.open(tmp_path):
        with pytest.raises(DataDirLockedError) as info:
            KmsService.open(tmp_path)
        assert str(tmp_path) in str(info.value)
    with KmsService.open(tmp_path):  # released on close
        pass


def test_data_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir"
    with KmsService.open(target):
        assert (target / "kms.sqlite3").exists()


def test_root_key_file_is_private(tmp_path: Path) -> None:
    with KmsService.open(tmp_path):
        pass
    root = tmp_path / "root.key"
    assert stat.S_IMODE(root.stat().st_mode) == 0o600
    assert len(base64.b64decode(root.read_text())) == 32


def test_material_is_not_stored_in_clear(tmp_path: Path) -> None:
    seed = {
        "keys": [
            {
                "key_id": "0b6c2b7e-2a8e-4f5f-9a3e-3a1c0c4f9d21",
                "versions": [
                    {
                        "version_id": "6e3a7d8c-1111-4222-8333-444455556666",
                        "material": base64.b64encode(SEED_MATERIAL).decode(),
                    }
                ],
            }
        ]
    }
    with KmsService.open(tmp_path, seed=seed) as kms:
        key_id = new_key(kms)
        kms.rotate_now(key_id)
    database = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"6e3a7d8c-1111-4222-8333-444455556666" in database  # the db was read
    assert SEED_MATERIAL not in database
    assert base64.b64encode(SEED_MATERIAL) not in database


def test_root_key_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    with KmsService.open(tmp_path) as kms:
        key_id = new_key(kms)
    assert not (tmp_path / "root.key").exists()
    with KmsService.open(tmp_path) as kms:
        assert call(kms, "DescribeKey", KeyId=key_id)
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(StorageError, match="root key"):
        KmsService.open(tmp_path)
    monkeypatch.delenv(ROOT_KEY_ENV)
    with pytest.raises(StorageError, match="root key"):
        KmsService.open(tmp_path)  # a generated root.key does not match either


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_malformed_root_key_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ROOT_KEY_ENV, value)
    with pytest.raises(StorageError, match=ROOT_KEY_ENV):
        KmsService.open(tmp_path)
    # the failed open released the directory
    monkeypatch.delenv(ROOT_KEY_ENV)
    with KmsService.open(tmp_path):
        pass


def test_failed_open_does_not_keep_the_lock(tmp_path: Path) -> None:
    (tmp_path / "kms.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        KmsService.open(tmp_path)
    (tmp_path / "kms.sqlite3").unlink()
    with KmsService.open(tmp_path):
        pass


def test_reset_drops_everything_and_reloads_the_seed(tmp_path: Path) -> None:
    seed = {"keys": [{"aliases": ["alias/seeded"]}]}
    with KmsService.open(tmp_path, seed=seed) as kms:
        seeded = call(kms, "DescribeKey", KeyId="alias/seeded")["KeyMetadata"]["KeyId"]
        extra = new_key(kms)
        kms.reset()
        keys = call(kms, "ListKeys")["Keys"]["Key"]
        assert [k["KeyId"] for k in keys] == [seeded]
        assert extra not in {k["KeyId"] for k in keys}
    with KmsService.open(tmp_path) as kms:
        assert call(kms, "ListKeys")["TotalCount"] == 1


def test_in_memory_service_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with KmsService.open() as kms:
        new_key(kms)
    assert list(tmp_path.iterdir()) == []
