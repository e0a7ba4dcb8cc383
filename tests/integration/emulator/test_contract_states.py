"""Contract: the key-state matrix (docs/kms-api.md §4, "Impact of CMK states").

Each cell builds a key in one state, runs one operation on it through each client
flavour, and checks the answer and the state the key is left in. The expected
table is written out here from the reference, independently of the emulator's own.
"""

from __future__ import annotations

from typing import Any

import pytest
from kms_clients import KmsCallError, KmsClient, NewKey, Target, unique_alias

pytestmark = pytest.mark.integration

STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport")
USE_ERRORS = {
    "Disabled": "Rejected.Disabled",
    "PendingDeletion": "Rejected.PendingDeletion",
    "PendingImport": "Rejected.PendingImport",
}
FAILED = "Rejected.StateModifiedFailed"

# operation -> state -> expected Code (None: success)
MATRIX: dict[str, dict[str, str | None]] = {
    "Encrypt": {"Enabled": None, **USE_ERRORS},
    "GenerateDataKey": {"Enabled": None, **USE_ERRORS},
    "GenerateDataKeyWithoutPlaintext": {"Enabled": None, **USE_ERRORS},
    "ReEncryptTo": {"Enabled": None, **USE_ERRORS},
    "EnableKey": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": FAILED,
        "PendingImport": FAILED,
    },
    "DisableKey": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": FAILED,
        "PendingImport": FAILED,
    },
    "ScheduleKeyDeletion": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": FAILED,
        "PendingImport": None,
    },
    "CancelKeyDeletion": {
        "Enabled": FAILED,
        "Disabled": FAILED,
        "PendingDeletion": None,
        "PendingImport": FAILED,
    },
    "CreateAlias": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": FAILED,
        "PendingImport": None,
    },
    "UpdateAlias": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": "Rejected.PendingDeletion",
        "PendingImport": None,
    },
    "DescribeKey": dict.fromkeys(STATES),
    "ListAliasesByKeyId": dict.fromkeys(STATES),
    "UpdateKeyDescription": dict.fromkeys(STATES),
}
# Decrypt and ReEncrypt need a blob made while the key was Enabled, so no
# PendingImport cell (an EXTERNAL key never had material here).
SOURCE_MATRIX: dict[str, dict[str, str | None]] = {
    "Decrypt": {
        "Enabled": None,
        "Disabled": "Rejected.Disabled",
        "PendingDeletion": "Rejected.PendingDeletion",
    },
    "ReEncryptFrom": {
        "Enabled": None,
        "Disabled": "Rejected.Disabled",
        "PendingDeletion": "Rejected.PendingDeletion",
    },
}
# The state an operation leaves the key in when it succeeds.
AFTER = {
    "EnableKey": "Enabled",
    "DisableKey": "Disabled",
    "ScheduleKeyDeletion": "PendingDeletion",
    "CancelKeyDeletion": "Enabled",
}


def _key_in(state: str, client: KmsClient, new_key: NewKey) -> str:
    if state == "PendingImport":
        return new_key(Origin="EXTERNAL")
    key_id = new_key()
    if state == "Disabled":
        client.call("DisableKey", KeyId=key_id)
    elif state == "PendingDeletion":
        client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    return key_id


def _run(operation: str, key_id: str, client: KmsClient, target: Target) -> None:
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "Encrypt": ("Encrypt", {"KeyId": key_id, "Plaintext": "p"}),
        "GenerateDataKey": ("GenerateDataKey", {"KeyId": key_id}),
        "GenerateDataKeyWithoutPlaintext": (
            "GenerateDataKeyWithoutPlaintext",
            {"KeyId": key_id},
        ),
        "EnableKey": ("EnableKey", {"KeyId": key_id}),
        "DisableKey": ("DisableKey", {"KeyId": key_id}),
        "ScheduleKeyDeletion": (
            "ScheduleKeyDeletion",
            {"KeyId": key_id, "PendingWindowInDays": 7},
        ),
        "CancelKeyDeletion": ("CancelKeyDeletion", {"KeyId": key_id}),
        "CreateAlias": ("CreateAlias", {"AliasName": unique_alias(), "KeyId": key_id}),
        "DescribeKey": ("DescribeKey", {"KeyId": key_id}),
        "ListAliasesByKeyId": ("ListAliasesByKeyId", {"KeyId": key_id}),
        "UpdateKeyDescription": (
            "UpdateKeyDescription",
            {"KeyId": key_id, "Description": "changed"},
        ),
    }
    if operation == "ReEncryptTo":
        sealed = client.call("Encrypt", KeyId=target.key_id, Plaintext="p")
        calls[operation] = (
            "ReEncrypt",
            {"CiphertextBlob": sealed["CiphertextBlob"], "DestinationKeyId": key_id},
        )
    if operation == "UpdateAlias":
        alias = unique_alias()
        client.call("CreateAlias", AliasName=alias, KeyId=target.key_id)
        calls[operation] = ("UpdateAlias", {"AliasName": alias, "KeyId": key_id})
    action, params = calls[operation]
    client.call(action, **params)


def _state(client: KmsClient, key_id: str) -> str:
    return str(client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["KeyState"])


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("operation", sorted(MATRIX))
def test_key_state_gates_the_operation(
    client: KmsClient, target: Target, new_key: NewKey, operation: str, state: str
) -> None:
    key_id = _key_in(state, client, new_key)
    expected = MATRIX[operation][state]
    if expected is None:
        _run(operation, key_id, client, target)
        assert _state(client, key_id) == AFTER.get(operation, state)
    else:
        with pytest.raises(KmsCallError) as caught:
            _run(operation, key_id, client, target)
        assert (caught.value.status, caught.value.code) == (409, expected)
        assert _state(client, key_id) == state


@pytest.mark.parametrize("state", ["Enabled", "Disabled", "PendingDeletion"])
@pytest.mark.parametrize("operation", sorted(SOURCE_MATRIX))
def test_key_state_of_the_blob_gates_decrypt_and_re_encrypt(
    client: KmsClient, target: Target, new_key: NewKey, operation: str, state: str
) -> None:
    key_id = new_key()
    sealed = client.call("Encrypt", KeyId=key_id, Plaintext="p")
    if state == "Disabled":
        client.call("DisableKey", KeyId=key_id)
    elif state == "PendingDeletion":
        client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    blob = sealed["CiphertextBlob"]

    def run() -> None:
        if operation == "Decrypt":
            client.call("Decrypt", CiphertextBlob=blob)
        else:
            client.call(
                "ReEncrypt", CiphertextBlob=blob, DestinationKeyId=target.key_id
            )

    expected = SOURCE_MATRIX[operation][state]
    if expected is None:
        run()
    else:
        with pytest.raises(KmsCallError) as caught:
            run()
        assert (caught.value.status, caught.value.code) == (409, expected)


def test_cancelled_deletion_returns_the_key_to_enabled_even_if_it_was_disabled(
    client: KmsClient, new_key: NewKey
) -> None:
    key_id = new_key()
    client.call("DisableKey", KeyId=key_id)
    client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    metadata = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert metadata["DeleteDate"]
    client.call("CancelKeyDeletion", KeyId=key_id)
    assert _state(client, key_id) == "Enabled"
