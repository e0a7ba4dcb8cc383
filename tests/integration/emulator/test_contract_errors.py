"""Contract: every documented error row, as each official client flavour sees it.

Rows come from docs/kms-api.md §4-5 (and the emulator's documented choices where
the reference says UNCONFIRMED). Key-state rows are in test_contract_states.py,
authentication and authorization rows in test_contract_auth.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kms_clients import KmsCallError, KmsClient, Target, unique_alias

pytestmark = pytest.mark.integration

UNKNOWN_KEY = str(uuid.UUID(int=0x5EED))


@dataclass(frozen=True)
class Row:
    """One request and the error it must get."""

    action: str
    params: Callable[[str], dict[str, Any]]  # the contract key id -> parameters
    status: int
    code: str


ROWS: dict[str, Row] = {
    "encrypt-no-key": Row(
        "Encrypt", lambda k: {"Plaintext": "p"}, 400, "MissingParameter"
    ),
    "encrypt-no-plaintext": Row(
        "Encrypt", lambda k: {"KeyId": k}, 400, "MissingParameter"
    ),
    "encrypt-unknown-key": Row(
        "Encrypt",
        lambda k: {"KeyId": UNKNOWN_KEY, "Plaintext": "p"},
        404,
        "Forbidden.KeyNotFound",
    ),
    "encrypt-unknown-alias": Row(
        "Encrypt",
        lambda k: {"KeyId": "alias/no-such-alias-here", "Plaintext": "p"},
        404,
        "Forbidden.AliasNotFound",
    ),
    "encrypt-plaintext-over-6KB": Row(
        "Encrypt",
        lambda k: {"KeyId": k, "Plaintext": "x" * 6145},
        400,
        "InvalidParameter",
    ),
    "context-non-string-value": Row(
        "Encrypt",
        lambda k: {"KeyId": k, "Plaintext": "p", "EncryptionContext": {"a": 1}},
        400,
        "InvalidParameter",
    ),
    "context-array-value": Row(
        "Encrypt",
        lambda k: {"KeyId": k, "Plaintext": "p", "EncryptionContext": {"a": ["b"]}},
        400,
        "InvalidParameter",
    ),
    "context-not-an-object": Row(
        "GenerateDataKey",
        lambda k: {"KeyId": k, "EncryptionContext": ["a", "b"]},
        400,
        "InvalidParameter",
    ),
    "context-over-8192-chars": Row(
        "Encrypt",
        lambda k: {
            "KeyId": k,
            "Plaintext": "p",
            "EncryptionContext": {"a": "v" * 8200},
        },
        400,
        "InvalidParameter",
    ),
    "data-key-0-bytes": Row(
        "GenerateDataKey",
        lambda k: {"KeyId": k, "NumberOfBytes": 0},
        400,
        "InvalidParameter",
    ),
    "data-key-1025-bytes": Row(
        "GenerateDataKey",
        lambda k: {"KeyId": k, "NumberOfBytes": 1025},
        400,
        "InvalidParameter",
    ),
    "data-key-bad-spec": Row(
        "GenerateDataKeyWithoutPlaintext",
        lambda k: {"KeyId": k, "KeySpec": "AES_512"},
        400,
        "InvalidParameter",
    ),
    "decrypt-no-blob": Row("Decrypt", lambda k: {}, 400, "MissingParameter"),
    "decrypt-garbage-blob": Row(
        "Decrypt", lambda k: {"CiphertextBlob": "not-a-blob"}, 400, "InvalidParameter"
    ),
    "re-encrypt-no-destination": Row(
        "ReEncrypt", lambda k: {"CiphertextBlob": "eA=="}, 400, "MissingParameter"
    ),
    "describe-unknown-key": Row(
        "DescribeKey", lambda k: {"KeyId": UNKNOWN_KEY}, 404, "Forbidden.KeyNotFound"
    ),
    "describe-unknown-version": Row(
        "DescribeKeyVersion",
        lambda k: {"KeyId": k, "KeyVersionId": UNKNOWN_KEY},
        404,
        "Forbidden.KeyVersionNotFound",
    ),
    "alias-without-prefix": Row(
        "CreateAlias",
        lambda k: {"AliasName": "contract", "KeyId": k},
        400,
        "InvalidParameter",
    ),
    "alias-reserved-acs": Row(
        "CreateAlias",
        lambda k: {"AliasName": "alias/acs/contract", "KeyId": k},
        400,
        "InvalidParameter",
    ),
    "delete-unknown-alias": Row(
        "DeleteAlias",
        lambda k: {"AliasName": "alias/no-such-alias-here"},
        404,
        "Forbidden.AliasNotFound",
    ),
    "update-unknown-alias": Row(
        "UpdateAlias",
        lambda k: {"AliasName": "alias/no-such-alias-here", "KeyId": k},
        404,
        "Forbidden.AliasNotFound",
    ),
    "create-asymmetric-key": Row(
        "CreateKey",
        lambda k: {"KeySpec": "RSA_2048"},
        400,
        "Rejected.UnsupportedOperation",
    ),
    "create-unknown-spec": Row(
        "CreateKey", lambda k: {"KeySpec": "Aliyun_AES_999"}, 400, "InvalidParameter"
    ),
    "list-keys-page-size-101": Row(
        "ListKeys", lambda k: {"PageSize": 101}, 400, "InvalidParameter"
    ),
    "list-keys-bad-filter": Row(
        "ListKeys",
        lambda k: {"Filters": [{"Key": "Color", "Values": ["red"]}]},
        400,
        "InvalidParameter",
    ),
    "deletion-window-3-days": Row(
        "ScheduleKeyDeletion",
        lambda k: {"KeyId": k, "PendingWindowInDays": 3},
        400,
        "InvalidParameter",
    ),
    "deletion-without-window": Row(
        "ScheduleKeyDeletion", lambda k: {"KeyId": k}, 400, "MissingParameter"
    ),
    "rotation-without-interval": Row(
        "UpdateRotationPolicy",
        lambda k: {"KeyId": k, "EnableAutomaticRotation": True},
        400,
        "MissingParameter",
    ),
    "rotation-interval-1-day": Row(
        "UpdateRotationPolicy",
        lambda k: {
            "KeyId": k,
            "EnableAutomaticRotation": True,
            "RotationInterval": "1d",
        },
        400,
        "InvalidParameter",
    ),
    "update-description-missing": Row(
        "UpdateKeyDescription", lambda k: {"KeyId": k}, 400, "MissingParameter"
    ),
}


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_bad_request_gets_the_documented_error(
    client: KmsClient, target: Target, row_id: str
) -> None:
    row = ROWS[row_id]
    with pytest.raises(KmsCallError) as caught:
        client.call(row.action, **row.params(target.key_id))
    assert (caught.value.status, caught.value.code) == (row.status, row.code)
    assert caught.value.message
    assert caught.value.request_id


def test_an_existing_alias_cannot_be_created_again(
    client: KmsClient, target: Target
) -> None:
    alias = unique_alias()
    client.call("CreateAlias", AliasName=alias, KeyId=target.key_id)
    try:
        with pytest.raises(KmsCallError) as caught:
            client.call("CreateAlias", AliasName=alias, KeyId=target.key_id)
        assert (caught.value.status, caught.value.code) == (400, "AliasAlreadyExists")
    finally:
        client.call("DeleteAlias", AliasName=alias)


def test_external_keys_cannot_rotate_automatically(client: KmsClient) -> None:
    with pytest.raises(KmsCallError) as caught:
        client.call(
            "CreateKey",
            Origin="EXTERNAL",
            EnableAutomaticRotation=True,
            RotationInterval="30d",
        )
    assert (caught.value.status, caught.value.code) == (400, "Unsupported.Origin")


def test_dry_run_checks_everything_and_does_nothing(
    client: KmsClient, target: Target
) -> None:
    with pytest.raises(KmsCallError) as caught:
        client.call("Encrypt", KeyId=target.key_id, Plaintext="p", DryRun="true")
    assert (caught.value.status, caught.value.code) == (400, "DryRunOperationError")
