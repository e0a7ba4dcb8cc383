"""Many threads at once: every blob made during rotations and alias moves decrypts."""

from __future__ import annotations

import threading
from pathlib import Path

from emu_helpers import call, new_key
from envelope_mq.kms_emulator.service import KmsService


def test_concurrent_data_keys_during_rotation_all_decrypt(tmp_path: Path) -> None:
    with KmsService.open(tmp_path) as kms:
        key_id = new_key(kms)
        call(kms, "CreateAlias", AliasName="alias/busy", KeyId=key_id)
        first = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"][
            "PrimaryKeyVersion"
        ]
        results: list[tuple[str, str, str]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(9)

        def produce() -> None:
            start.wait()
            try:
                for _ in range(150):
                    body = call(
                        kms,
                        "GenerateDataKey",
                        KeyId="alias/busy",
                        EncryptionContext='{"t":"1"}',
                    )
                    results.append(
                        (
                            body["CiphertextBlob"],
                            body["Plaintext"],
                            body["KeyVersionId"],
                        )
                    )
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=produce) for _ in range(8)]
        for thread in threads:
            thread.start()
        start.wait()
        rotated = [kms.rotate_now(key_id) for _ in range(20)]
        for n in range(20):
            call(kms, "CreateAlias", AliasName=f"alias/extra{n}", KeyId=key_id)
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(results) == 8 * 150
        assert {version for _, _, version in results} <= {first, *rotated}
        for blob, plaintext, version in results:
            opened = call(
                kms, "Decrypt", CiphertextBlob=blob, EncryptionContext='{"t":"1"}'
            )
            assert (opened["Plaintext"], opened["KeyVersionId"]) == (plaintext, version)
        listed = call(kms, "ListKeyVersions", KeyId=key_id, PageSize="100")
        assert listed["TotalCount"] == 21
