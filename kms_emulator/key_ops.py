"""Key lifecycle: CreateKey, DescribeKey, ListKeys, Enable/DisableKey, deletion,
UpdateKeyDescription and DescribeRegions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envelope_mq.kms_emulator.errors import (
    ApiError,
    invalid_parameter,
    missing_parameter,
)
from envelope_mq.kms_emulator.keyring import Keyring
from envelope_mq.kms_emulator.model import ASYMMETRIC_SPECS, SYMMETRIC_SPECS, Key
from envelope_mq.kms_emulator.paging import page
from envelope_mq.kms_emulator.params import (
    format_date,
    optional,
    parse_bool,
    parse_int,
    parse_interval,
    parse_json,
    utf8,
)
from envelope_mq.kms_emulator.request import Call

__all__ = ["HANDLERS", "MAX_DESCRIPTION_CHARS", "metadata", "unsupported_origin"]

MAX_DESCRIPTION_CHARS = 8192
DEFAULT_ROTATION_INTERVAL = 365 * 86400
_FILTER_KEYS = ("KeyState", "KeySpec", "KeyUsage", "ProtectionLevel", "CreatorType")


def unsupported_origin() -> ApiError:
    """400 Unsupported.Origin: rotation and versions need KMS-made material."""
    return ApiError(
        400, "Unsupported.Origin", "This key origin is not valid for this api."
    )


def metadata(ring: Keyring, key: Key) -> dict[str, Any]:
    """The KeyMetadata object of DescribeKey and CreateKey."""
    primary = key.primary
    result: dict[str, Any] = {
        "KeyId": key.key_id,
        "Arn": ring.arn(key.key_id),
        "KeyState": key.state,
        "CreationDate": format_date(key.created),
        "Creator": ring.account_id,
        "Description": key.description,
        "KeyUsage": key.key_usage,
        "KeySpec": key.key_spec,
        "Origin": key.origin,
        "ProtectionLevel": key.protection_level,
        "PrimaryKeyVersion": primary.version_id if primary else "",
        "DeleteDate": (
            format_date(key.delete_date)
            if key.state == "PendingDeletion" and key.delete_date is not None
            else ""
        ),
        "MaterialExpireTime": "",
        "AutomaticRotation": "Disabled",
        "LastRotationDate": format_date(key.last_rotation),
        "DeletionProtection": "Disabled",
        "DeletionProtectionDescription": "",
    }
    next_rotation = key.next_rotation
    if key.rotation_interval is not None and next_rotation is not None:
        result["AutomaticRotation"] = "Enabled"
        result["NextRotationDate"] = format_date(next_rotation)
        result["RotationInterval"] = f"{key.rotation_interval}s"
    return result


def _description(call: Call, *, needed: bool) -> str:
    value = call.params.get("Description")
    if value is None:
        if needed:
            raise missing_parameter("Description")
        return ""
    utf8(value, "Description")  # it is stored, and SQLite takes only UTF-8
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise invalid_parameter(
            "Description", f"At most {MAX_DESCRIPTION_CHARS} characters."
        )
    return value


def _choice(call: Call, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = optional(call.params, name) or default
    if value not in allowed:
        raise invalid_parameter(name, f"Expected one of {', '.join(allowed)}.")
    return value


def _key_spec(call: Call) -> str:
    spec = optional(call.params, "KeySpec") or "Aliyun_AES_256"
    if spec in ASYMMETRIC_SPECS:
        raise ApiError(
            400,
            "Rejected.UnsupportedOperation",
            f"Unsupported operation. The emulator has symmetric keys only "
            f"({', '.join(SYMMETRIC_SPECS)}); {spec} is not emulated.",
        )
    if spec not in SYMMETRIC_SPECS:
        raise invalid_parameter("KeySpec")
    return spec


def _check_tags(call: Call) -> None:
    raw = optional(call.params, "Tags")
    if raw is None:
        return
    tags = parse_json(raw, "Tags")
    if not isinstance(tags, list) or not all(
        isinstance(tag, dict)
        and set(tag) <= {"TagKey", "TagValue"}
        and all(isinstance(v, str) for v in tag.values())
        for tag in tags
    ):
        raise invalid_parameter("Tags", 'Expected [{"TagKey": ..., "TagValue": ...}].')


def create_key(call: Call) -> dict[str, Any]:
    """CreateKey: a symmetric key with a first version (none for EXTERNAL)."""
    description = _description(call, needed=False)
    usage = optional(call.params, "KeyUsage") or "ENCRYPT/DECRYPT"
    if usage == "SIGN/VERIFY":
        raise ApiError(
            400,
            "Rejected.UnsupportedOperation",
            "Unsupported operation. SIGN/VERIFY keys are not emulated.",
        )
    if usage != "ENCRYPT/DECRYPT":
        raise invalid_parameter("KeyUsage")
    spec = _key_spec(call)
    origin = _choice(call, "Origin", "Aliyun_KMS", ("Aliyun_KMS", "EXTERNAL"))
    level = _choice(call, "ProtectionLevel", "SOFTWARE", ("SOFTWARE", "HSM"))
    rotate = parse_bool(call.params, "EnableAutomaticRotation", False)
    interval_text = optional(call.params, "RotationInterval")
    interval = (
        parse_interval(interval_text, "RotationInterval", 7, 365)
        if interval_text is not None
        else DEFAULT_ROTATION_INTERVAL
    )
    if rotate and origin == "EXTERNAL":
        raise unsupported_origin()
    _check_tags(call)
    ring = call.ring
    key = Key(
        key_id=ring.new_key_id(),
        created=ring.now(),
        key_spec=spec,
        description=description,
        state="PendingImport" if origin == "EXTERNAL" else "Enabled",
        origin=origin,
        protection_level=level,
        rotation_interval=interval if rotate else None,
    )
    ring.add_key(key)
    if origin != "EXTERNAL":
        ring.add_version(key, created=key.created)
    return {"KeyMetadata": metadata(ring, key)}


def describe_key(call: Call) -> dict[str, Any]:
    """DescribeKey: the KeyMetadata of one key, in any state."""
    return {"KeyMetadata": metadata(call.ring, call.key())}


def _filters(call: Call) -> list[tuple[str, frozenset[str]]]:
    raw = optional(call.params, "Filters")
    if raw is None:
        return []
    value = parse_json(raw, "Filters")
    problem = invalid_parameter(
        "Filters",
        f'Expected [{{"Key": one of {"/".join(_FILTER_KEYS)}, "Values": [...]}}].',
    )
    if not isinstance(value, list):
        raise problem
    result = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"Key", "Values"}:
            raise problem
        values = item["Values"]
        if item["Key"] not in _FILTER_KEYS or not isinstance(values, list):
            raise problem
        if not all(isinstance(v, str) for v in values):
            raise problem
        result.append((item["Key"], frozenset(values)))
    return result


def _field(key: Key, name: str) -> str:
    if name == "CreatorType":
        return "User"  # no cloud service creates keys in the emulator
    return {
        "KeyState": key.state,
        "KeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        "ProtectionLevel": key.protection_level,
    }[name]


def list_keys(call: Call) -> dict[str, Any]:
    """ListKeys: paged, filtered (OR within Values, AND across Keys), oldest first."""
    filters = _filters(call)
    with call.ring.lock:
        call.ring.sweep()
        keys = sorted(call.ring.keys.values(), key=lambda k: (k.created, k.key_id))
    keys = [k for k in keys if all(_field(k, n) in vs for n, vs in filters)]
    items, fields = page(call.params, keys)
    entries = [{"KeyId": k.key_id, "KeyArn": call.ring.arn(k.key_id)} for k in items]
    return {"Keys": {"Key": entries}, **fields}


def _set_state(
    call: Call, state: str, delete_date: int | None = None
) -> dict[str, Any]:
    with call.ring.lock:
        key = call.key()
        key.state = state
        key.delete_date = delete_date
        call.ring.save(key)
    return {}


def enable_key(call: Call) -> dict[str, Any]:
    """EnableKey: Enabled or Disabled → Enabled (idempotent)."""
    return _set_state(call, "Enabled")


def disable_key(call: Call) -> dict[str, Any]:
    """DisableKey: Enabled or Disabled → Disabled (idempotent)."""
    return _set_state(call, "Disabled")


def schedule_key_deletion(call: Call) -> dict[str, Any]:
    """ScheduleKeyDeletion: PendingDeletion for 7 to 366 days, then deleted."""
    if call.params.get("PendingWindowInDays") in (None, ""):
        raise missing_parameter("PendingWindowInDays")
    days = parse_int(call.params, "PendingWindowInDays", 0, 7, 366)
    return _set_state(call, "PendingDeletion", call.ring.now() + days * 86400)


def cancel_key_deletion(call: Call) -> dict[str, Any]:
    """CancelKeyDeletion: PendingDeletion → Enabled."""
    return _set_state(call, "Enabled")


def update_key_description(call: Call) -> dict[str, Any]:
    """UpdateKeyDescription: may set an empty description."""
    description = _description(call, needed=True)
    with call.ring.lock:
        key = call.key()
        key.description = description
        call.ring.save(key)
    return {}


def describe_regions(call: Call) -> dict[str, Any]:
    """DescribeRegions: the emulator's one region."""
    return {"Regions": {"Region": [{"RegionId": call.ring.region_id}]}}


HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "CreateKey": create_key,
    "DescribeKey": describe_key,
    "ListKeys": list_keys,
    "EnableKey": enable_key,
    "DisableKey": disable_key,
    "ScheduleKeyDeletion": schedule_key_deletion,
    "CancelKeyDeletion": cancel_key_deletion,
    "UpdateKeyDescription": update_key_description,
    "DescribeRegions": describe_regions,
}
