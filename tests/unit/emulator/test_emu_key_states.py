"""The key-state matrix: every state x every key operation -> the documented outcome.

The expected table is written out here by hand from Alibaba's "Impact of CMK
states on API calls", independently of kms_emulator.states.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from emu_helpers import FakeClock, call, error_of, new_key
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.service import KmsService

OK = None
DISABLED = (409, "Rejected.Disabled")
PENDING_DELETION = (409, "Rejected.PendingDeletion")
PENDING_IMPORT = (409, "Rejected.PendingImport")
MODIFY_FAILED = (409, "Rejected.StateModifiedFailed")
STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport")
Outcome = tuple[int, str] | None


def use(enabled: Outcome = OK) -> dict[str, Outcome]:
    return {
        "Enabled": enabled,
        "Disabled": DISABLED,
        "PendingDeletion": PENDING_DELETION,
        "PendingImport": PENDING_IMPORT,
    }


def always() -> dict[str, Outcome]:
    return dict.fromkeys(STATES, OK)


EXPECTED: dict[str, dict[str, Outcome]] = {
    "Encrypt": use(),
    "GenerateDataKey": use(),
    "GenerateDataKeyWithoutPlaintext": use(),
    "Decrypt": use(),
    "ReEncrypt": use(),  # the key of the source blob
    "ReEncrypt(destination)": use(),
    "CreateKeyVersion": use(),
    "EnableKey": {
        "Enabled": OK,
        "Disabled": OK,
        "PendingDeletion": MODIFY_FAILED,
        "PendingImport": MODIFY_FAILED,
    },
    "DisableKey": {
        "Enabled": OK,
        "Disabled": OK,
        "PendingDeletion": MODIFY_FAILED,
        "PendingImport": MODIFY_FAILED,
    },
    "ScheduleKeyDeletion": {**always(), "PendingDeletion": MODIFY_FAILED},
    "CancelKeyDeletion": {
        **dict.fromkeys(STATES, MODIFY_FAILED),
        "PendingDeletion": OK,
    },
    "CreateAlias": {**always(), "PendingDeletion": MODIFY_FAILED},
    "UpdateAlias": {**always(), "PendingDeletion": PENDING_DELETION},
    "UpdateRotationPolicy": {
        "Enabled": OK,
        "Disabled": OK,
        "PendingDeletion": PENDING_DELETION,
        "PendingImport": PENDING_IMPORT,
    },
    "DescribeKey": always(),
    "UpdateKeyDescription": always(),
    "ListKeyVersions": always(),
    "ListAliasesByKeyId": always(),
    "DeleteAlias": always(),
    "DescribeKeyVersion": always(),
}
# A PendingImport key has no material, so no blob or version can name it.
NOT_APPLICABLE = {
    ("Decrypt", "PendingImport"),
    ("ReEncrypt", "PendingImport"),
    ("DescribeKeyVersion", "PendingImport"),
}


def key_in(kms: KmsService, state: str) -> str:
    if state == "PendingImport":
        return new_key(kms, Origin="EXTERNAL")
    key_id = new_key(kms)
    if state == "Disabled":
        call(kms, "DisableKey", KeyId=key_id)
    if state == "PendingDeletion":
        call(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    return key_id


def state_of(kms: KmsService, key_id: str) -> str:
    return str(call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]["KeyState"])


def request(kms: KmsService, operation: str, state: str) -> Callable[[], object]:
    """Build a valid request for ``operation`` on a key in ``state``."""
    key_id = new_key(kms) if state != "PendingImport" else ""
    blob = version = ""
    if key_id:  # material made while Enabled, then the key moves to ``state``
        blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
        version = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"][
            "PrimaryKeyVersion"
        ]
        if state == "Disabled":
            call(kms, "DisableKey", KeyId=key_id)
        if state == "PendingDeletion":
            call(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    else:
        key_id = key_in(kms, state)
    call(kms, "CreateAlias", AliasName="alias/existing", KeyId=new_key(kms))
    params: dict[str, str] = {"KeyId": key_id}
    if operation == "Encrypt":
        params["Plaintext"] = "p"
    elif operation == "Decrypt":
        params = {"CiphertextBlob": blob}
    elif operation == "ReEncrypt":
        params = {"CiphertextBlob": blob, "DestinationKeyId": new_key(kms)}
    elif operation == "ReEncrypt(destination)":
        source = new_key(kms)
        source_blob = call(kms, "Encrypt", KeyId=source, Plaintext="p")
        params = {
            "CiphertextBlob": source_blob["CiphertextBlob"],
            "DestinationKeyId": key_id,
        }
        operation = "ReEncrypt"
    elif operation == "ScheduleKeyDeletion":
        params["PendingWindowInDays"] = "30"
    elif operation == "CreateAlias":
        params["AliasName"] = "alias/new"
    elif operation == "UpdateAlias":
        params["AliasName"] = "alias/existing"  # re-pointed at the key
    elif operation == "DeleteAlias":
        call(kms, "CreateAlias", AliasName="alias/doomed", KeyId=new_key(kms))
        if state != "PendingDeletion":
            call(kms, "UpdateAlias", AliasName="alias/doomed", KeyId=key_id)
        params = {"AliasName": "alias/doomed"}
    elif operation == "UpdateRotationPolicy":
        params["EnableAutomaticRotation"] = "false"
    elif operation == "UpdateKeyDescription":
        params["Description"] = "new"
    elif operation == "DescribeKeyVersion":
        params["KeyVersionId"] = version
    return lambda: kms.call(operation, params, None)


CASES = [
    (operation, state)
    for operation in EXPECTED
    for state in STATES
    if (operation, state) not in NOT_APPLICABLE
]


@pytest.mark.parametrize(("operation", "state"), CASES)
def test_key_state_gates_operation(kms: KmsService, operation: str, state: str) -> None:
    send = request(kms, operation, state)
    expected = EXPECTED[operation][state]
    if expected is None:
        send()
        return
    with pytest.raises(ApiError) as info:
        send()
    assert (info.value.status, info.value.code) == expected


def test_delete_alias_works_while_its_key_is_pending_deletion(kms: KmsService) -> None:
    key_id = new_key(kms)
    call(kms, "CreateAlias", AliasName="alias/late", KeyId=key_id)
    call(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    call(kms, "DeleteAlias", AliasName="alias/late")
    assert call(kms, "ListAliasesByKeyId", KeyId=key_id)["TotalCount"] == 0


@pytest.mark.parametrize(
    ("start", "action", "end"),
    [
        ("Enabled", "DisableKey", "Disabled"),
        ("Disabled", "DisableKey", "Disabled"),
        ("Disabled", "EnableKey", "Enabled"),
        ("Enabled", "EnableKey", "Enabled"),
        ("PendingDeletion", "CancelKeyDeletion", "Enabled"),
    ],
)
def test_state_transitions(kms: KmsService, start: str, action: str, end: str) -> None:
    key_id = key_in(kms, start)
    assert call(kms, action, KeyId=key_id) == {}  # RequestId only, added by the edge
    assert state_of(kms, key_id) == end


def test_disabled_key_cannot_decrypt_its_old_blobs_until_enabled(
    kms: KmsService,
) -> None:
    key_id = new_key(kms)
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    call(kms, "DisableKey", KeyId=key_id)
    assert error_of(kms, "Decrypt", CiphertextBlob=blob).code == "Rejected.Disabled"
    call(kms, "EnableKey", KeyId=key_id)
    assert call(kms, "Decrypt", CiphertextBlob=blob)["Plaintext"] == "p"


def test_schedule_key_deletion_sets_delete_date(kms: KmsService) -> None:
    key_id = new_key(kms)
    call(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["DeleteDate"] == "2026-01-08T00:00:00Z"
    call(kms, "CancelKeyDeletion", KeyId=key_id)
    assert call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]["DeleteDate"] == ""


def test_key_is_deleted_when_its_delete_date_passes(
    kms: KmsService, clock: FakeClock
) -> None:
    key_id = new_key(kms)
    call(kms, "CreateAlias", AliasName="alias/gone", KeyId=key_id)
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    call(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="7")
    clock.advance(7 * 86400 - 1)
    assert state_of(kms, key_id) == "PendingDeletion"
    clock.advance(1)
    assert error_of(kms, "DescribeKey", KeyId=key_id).code == "Forbidden.KeyNotFound"
    assert error_of(kms, "Decrypt", CiphertextBlob=blob).status == 400
    assert call(kms, "ListKeys")["TotalCount"] == 0
    assert call(kms, "ListAliases")["TotalCount"] == 0


@pytest.mark.parametrize("days", ["6", "367", "", "x"])
def test_pending_window_outside_7_to_366_days_is_rejected(
    kms: KmsService, days: str
) -> None:
    key_id = new_key(kms)
    exc = error_of(kms, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=days)
    assert exc.status == 400
    assert exc.code == ("MissingParameter" if days == "" else "InvalidParameter")
