"""Seed files: format, idempotent loading, and errors that name the line."""

from __future__ import annotations

import base64
import json
import struct
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from emu_helpers import DAY, START, FakeClock, call
from envelope_mq.kms_emulator.errors import SeedError
from envelope_mq.kms_emulator.service import KmsService

KEY = "0b6c2b7e-2a8e-4f5f-9a3e-3a1c0c4f9d21"
V1 = "6e3a7d8c-1111-4222-8333-444455556666"
V2 = "7f4b8e9d-2222-4333-8444-555566667777"
M1 = bytes(range(32))
M2 = bytes(range(32, 64))
B1 = base64.b64encode(M1).decode()
B2 = base64.b64encode(M2).decode()

SEED_YAML = f"""\
principals:
  - access_key_id: producer-ak
    access_key_secret: producer-secret
    actions: [GenerateDataKey, DescribeKey]
    keys: ["*"]
keys:
  - key_id: {KEY}
    description: demo key
    key_spec: Aliyun_AES_256
    state: Enabled
    aliases: [alias/demo, alias/other]
    rotation: {{enabled: true, interval: 30d}}
    versions:
      - {{version_id: {V1}, material: {B1}, created: "2025-12-01T00:00:00Z"}}
      - version_id: {V2}
        material: {B2}
        created: 2025-12-20T00:00:00Z
  - description: generated id
    state: Disabled
  - description: going away
    state: PendingDeletion
    delete_date: "2026-02-01T00:00:00Z"
  - state: PendingImport
"""


def write(tmp_path: Path, text: str, name: str = "seed.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def snapshot(kms: KmsService) -> dict[str, object]:
    keys = call(kms, "ListKeys", PageSize="100")["Keys"]["Key"]
    return {
        "keys": {k["KeyId"]: call(kms, "DescribeKey", KeyId=k["KeyId"]) for k in keys},
        "versions": {
            k["KeyId"]: call(kms, "ListKeyVersions", KeyId=k["KeyId"]) for k in keys
        },
        "aliases": call(kms, "ListAliases", PageSize="100"),
    }


def test_seed_loads_keys_versions_states_rotation_and_aliases(
    tmp_path: Path, clock: FakeClock
) -> None:
    with KmsService.open(seed=write(tmp_path, SEED_YAML), clock=clock) as kms:
        meta = call(kms, "DescribeKey", KeyId="alias/demo")["KeyMetadata"]
        assert meta["KeyId"] == KEY
        assert meta["Description"] == "demo key"
        assert meta["PrimaryKeyVersion"] == V2
        assert meta["CreationDate"] == "2025-12-01T00:00:00Z"
        assert meta["LastRotationDate"] == "2025-12-20T00:00:00Z"
        assert meta["NextRotationDate"] == "2026-01-19T00:00:00Z"
        assert meta["RotationInterval"] == "2592000s"
        states = sorted(
            call(kms, "DescribeKey", KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
            for k in call(kms, "ListKeys")["Keys"]["Key"]
        )
        assert states == ["Disabled", "Enabled", "PendingDeletion", "PendingImport"]
        principal = kms.principal("producer-ak")
        assert principal is not None
        assert principal.actions == frozenset({"GenerateDataKey", "DescribeKey"})


def test_seeded_material_opens_a_blob_built_by_hand(tmp_path: Path) -> None:
    """Pins the blob layout and the canonical context as a known answer."""
    iv = bytes(12)
    context = b"".join(
        struct.pack(">I", len(s)) + s for s in (b"k", b"v")
    )  # {"k": "v"}
    sealed = AESGCM(M1).encrypt(iv, b"hello", V1.encode() + context)
    blob = base64.b64encode(V1.encode() + iv + sealed).decode()
    with KmsService.open(seed=write(tmp_path, SEED_YAML)) as kms:
        body = call(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext='{"k":"v"}')
    assert body == {"KeyId": KEY, "KeyVersionId": V1, "Plaintext": "hello"}


def test_loading_a_seed_twice_changes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    seed = write(tmp_path, SEED_YAML)
    data = tmp_path / "data"
    with KmsService.open(data, seed=seed, clock=clock) as kms:
        first = snapshot(kms)
        blob = call(kms, "Encrypt", KeyId="alias/demo", Plaintext="p")["CiphertextBlob"]
    clock.advance(3600)
    with KmsService.open(data, seed=seed, clock=clock) as kms:
        assert snapshot(kms) == first
        assert call(kms, "Decrypt", CiphertextBlob=blob)["Plaintext"] == "p"
        kms.reset()
        kms.reset()
        assert len(call(kms, "ListKeys")["Keys"]["Key"]) == 4


def test_seed_never_overwrites_changed_keys_or_aliases(tmp_path: Path) -> None:
    seed = write(tmp_path, SEED_YAML)
    data = tmp_path / "data"
    with KmsService.open(data, seed=seed) as kms:
        call(kms, "DisableKey", KeyId=KEY)
        other = call(kms, "CreateKey")["KeyMetadata"]["KeyId"]
        call(kms, "UpdateAlias", AliasName="alias/other", KeyId=other)
    with KmsService.open(data, seed=seed) as kms:
        assert (
            call(kms, "DescribeKey", KeyId=KEY)["KeyMetadata"]["KeyState"] == "Disabled"
        )
        assert (
            call(kms, "DescribeKey", KeyId="alias/other")["KeyMetadata"]["KeyId"]
            == other
        )


def test_generated_key_ids_are_stable_across_loads(tmp_path: Path) -> None:
    seed = write(tmp_path, "keys:\n  - {description: a}\n  - {description: b}\n")
    with KmsService.open(seed=seed) as one, KmsService.open(seed=seed) as two:
        ids_one = [k["KeyId"] for k in call(one, "ListKeys")["Keys"]["Key"]]
        ids_two = [k["KeyId"] for k in call(two, "ListKeys")["Keys"]["Key"]]
    assert sorted(ids_one) == sorted(ids_two)
    assert len(set(ids_one)) == 2


def test_json_seed_and_mapping_seed(tmp_path: Path) -> None:
    document = {"keys": [{"key_id": KEY, "aliases": ["alias/json"]}]}
    path = write(tmp_path, json.dumps(document, indent=2), "seed.json")
    for seed in (path, document):
        with KmsService.open(seed=seed) as kms:
            assert (
                call(kms, "DescribeKey", KeyId="alias/json")["KeyMetadata"]["KeyId"]
                == KEY
            )


def test_pending_deletion_seed_is_deleted_when_due(tmp_path: Path) -> None:
    clock = FakeClock(START)
    with KmsService.open(seed=write(tmp_path, SEED_YAML), clock=clock) as kms:
        assert call(kms, "ListKeys")["TotalCount"] == 4
        clock.advance(31 * DAY)
        assert call(kms, "ListKeys")["TotalCount"] == 3


def test_empty_seed_is_valid(tmp_path: Path) -> None:
    with KmsService.open(seed=write(tmp_path, "")) as kms:
        assert call(kms, "ListKeys")["TotalCount"] == 0


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("keys:\n  - description: a\n   state: Enabled\n", 3, ""),
        ("keys:\n  - {description: a\n", 3, ""),
        (
            "principals:\n  - access_key_id: a\n    access_key_secret: b\n"
            "    actions: [Encrypt, Dance]\n",
            4,
            "Dance",
        ),
        ("principals:\n  - access_key_id: a\n    access_key_secret: b\n", 2, "actions"),
        (f"keys:\n  - key_id: {KEY}\n  - key_id: {KEY[:-1]}\n", 3, "UUID"),
        ("keys:\n  - description: a\n    colour: red\n", 3, "colour"),
        ("keys:\n  - state: Sleeping\n", 2, "state"),
        ("keys:\n  - key_spec: RSA_2048\n", 2, "key_spec"),
        (
            "keys:\n  - aliases: [alias/a]\n  - aliases: [alias/b, alias/a]\n",
            3,
            "alias/a",
        ),
        ("keys:\n  - aliases: [demo]\n", 2, "demo"),
        (f"keys:\n  - key_id: {KEY}\n\n  - key_id: {KEY}\n", 4, "duplicate"),
        (
            "keys:\n  - versions:\n      - {version_id: " + V1 + ", material: AAAA}\n",
            3,
            "32 bytes",
        ),
        (
            "keys:\n  - versions:\n      - {version_id: " + V1 + ", material: '!!'}\n",
            3,
            "base64",
        ),
        ("keys:\n  - rotation: {enabled: true, interval: 2d}\n", 2, "interval"),
        (
            "keys:\n  - state: PendingImport\n    versions:\n      - {version_id: "
            + V1
            + ", material: "
            + base64.b64encode(M1).decode()
            + "}\n",
            2,
            "PendingImport",
        ),
        ("keys:\n  - created: yesterday\n", 2, "date"),
        (
            "keys:\n  - state: Enabled\n    delete_date: 2026-01-01T00:00:00Z\n",
            3,
            "delete_date",
        ),
        ("- just a list\n", 1, "mapping"),
        ("keys: 5\n", 1, "list"),
        ("users: []\n", 1, "users"),
    ],
)
def test_malformed_yaml_seed_names_the_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SeedError) as info:
        KmsService.open(seed=path)
    assert info.value.line == line
    assert f"{path}:{line}" in str(info.value)
    assert fragment in str(info.value)


def test_malformed_json_seed_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, '{\n  "keys": [\n    {"description": "a",}\n  ]\n}\n', "s.json"
    )
    with pytest.raises(SeedError) as info:
        KmsService.open(seed=path)
    assert info.value.line == 3
    path = write(
        tmp_path, '{\n  "keys": [\n    {},\n    {"state": "Odd"}\n  ]\n}\n', "s.json"
    )
    with pytest.raises(SeedError) as info:
        KmsService.open(seed=path)
    assert info.value.line == 4


def test_mapping_seed_errors_name_the_path() -> None:
    with pytest.raises(SeedError, match=r"keys\.0\.state"):
        KmsService.open(seed={"keys": [{"state": "Odd"}]})


def test_unreadable_seed_is_a_seed_error(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="cannot read"):
        KmsService.open(seed=tmp_path / "missing.yaml")


def test_version_owned_by_another_key_is_refused(tmp_path: Path) -> None:
    versions = f"    versions: [{{version_id: {V1}, material: {B1}}}]\n"
    first = f"keys:\n  - key_id: {KEY}\n{versions}"
    other = "1c7d3c8f-3b9f-4a6a-8b4f-4b2d1d5a0e32"
    second = f"keys:\n  - key_id: {other}\n{versions}"
    data = tmp_path / "data"
    with KmsService.open(data, seed=write(tmp_path, first)):
        pass
    with pytest.raises(SeedError) as info:
        KmsService.open(data, seed=write(tmp_path, second, "second.yaml"))
    assert info.value.line == 2
    with KmsService.open(data):  # the failed open released the directory
        pass
