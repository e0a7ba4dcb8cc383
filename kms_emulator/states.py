"""The ONE table of key state x operation -> outcome, used by every operation.

Rows follow Alibaba's "Impact of CMK states on API calls": cryptographic calls need
an Enabled key; Enable/Disable work between Enabled and Disabled only; deletion
can be scheduled once and cancelled only while pending. Operations absent from
the table (DescribeKey, ListKeys, DeleteAlias, ...) work in every state.
"""

from __future__ import annotations

from envelope_mq.kms_emulator.errors import ApiError

__all__ = ["STATE_TABLE", "check_state"]

_Outcome = tuple[int, str] | None  # None: allowed; else (HTTP status, Code)

_DISABLED = (409, "Rejected.Disabled")
_PENDING_DELETION = (409, "Rejected.PendingDeletion")
_PENDING_IMPORT = (409, "Rejected.PendingImport")
_MODIFY_FAILED = (409, "Rejected.StateModifiedFailed")

_USE: dict[str, _Outcome] = {
    "Enabled": None,
    "Disabled": _DISABLED,
    "PendingDeletion": _PENDING_DELETION,
    "PendingImport": _PENDING_IMPORT,
}
_TOGGLE: dict[str, _Outcome] = {
    "Enabled": None,
    "Disabled": None,
    "PendingDeletion": _MODIFY_FAILED,
    "PendingImport": _MODIFY_FAILED,
}

STATE_TABLE: dict[str, dict[str, _Outcome]] = {
    "Encrypt": _USE,
    "Decrypt": _USE,
    "GenerateDataKey": _USE,
    "GenerateDataKeyWithoutPlaintext": _USE,
    "ReEncrypt": _USE,  # both the source and the destination key
    "CreateKeyVersion": _USE,
    "EnableKey": _TOGGLE,
    "DisableKey": _TOGGLE,
    "UpdateRotationPolicy": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": _PENDING_DELETION,
        "PendingImport": _PENDING_IMPORT,
    },
    "ScheduleKeyDeletion": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": _MODIFY_FAILED,
        "PendingImport": None,
    },
    "CancelKeyDeletion": {
        "Enabled": _MODIFY_FAILED,
        "Disabled": _MODIFY_FAILED,
        "PendingDeletion": None,
        "PendingImport": _MODIFY_FAILED,
    },
    "CreateAlias": {
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": _MODIFY_FAILED,
        "PendingImport": None,
    },
    "UpdateAlias": {  # the new target key
        "Enabled": None,
        "Disabled": None,
        "PendingDeletion": _PENDING_DELETION,
        "PendingImport": None,
    },
}

_MESSAGES = {
    "Rejected.Disabled": "The request was rejected because the key state is Disabled.",
    "Rejected.PendingDeletion": (
        "The request was rejected because the key state is PendingDeletion."
    ),
    "Rejected.PendingImport": (
        "The request was rejected because the key state is PendingImport."
    ),
    "Rejected.StateModifiedFailed": "Keystate modified failed.",
}


def check_state(action: str, state: str) -> None:
    """Raise the documented error if ``action`` is not allowed in ``state``."""
    row = STATE_TABLE.get(action)
    if row is None:
        return
    outcome = row[state]
    if outcome is not None:
        status, code = outcome
        raise ApiError(status, code, _MESSAGES[code])
