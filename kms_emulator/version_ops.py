"""Key versions and rotation: CreateKeyVersion, ListKeyVersions,
DescribeKeyVersion and UpdateRotationPolicy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError, missing_parameter
from envelope_mq.kms_emulator.key_ops import unsupported_origin
from envelope_mq.kms_emulator.model import KeyVersion
from envelope_mq.kms_emulator.paging import page
from envelope_mq.kms_emulator.params import (
    format_date,
    parse_bool,
    parse_interval,
    required,
)
from envelope_mq.kms_emulator.request import Call

__all__ = ["HANDLERS", "version_view"]


def version_view(version: KeyVersion) -> dict[str, Any]:
    """The KeyVersion object {KeyId, KeyVersionId, CreationDate}."""
    return {
        "KeyId": version.key_id,
        "KeyVersionId": version.version_id,
        "CreationDate": format_date(version.created),
    }


def create_key_version(call: Call) -> dict[str, Any]:
    """CreateKeyVersion: a new primary version now (real KMS: asymmetric keys only)."""
    with call.ring.lock:
        key = call.key()
        if key.origin == "EXTERNAL":
            raise unsupported_origin()
        version = call.ring.add_version(key)
    return {"KeyVersion": version_view(version)}


def list_key_versions(call: Call) -> dict[str, Any]:
    """ListKeyVersions: oldest first, paged."""
    key = call.key()
    items, fields = page(call.params, list(key.versions))
    return {"KeyVersions": {"KeyVersion": [version_view(v) for v in items]}, **fields}


def describe_key_version(call: Call) -> dict[str, Any]:
    """DescribeKeyVersion: one version of the key."""
    key = call.key()
    version_id = required(call.params, "KeyVersionId")
    for version in key.versions:
        if version.version_id == version_id:
            return {"KeyVersion": version_view(version)}
    raise ApiError(
        404, "Forbidden.KeyVersionNotFound", "The specified Key version is not found."
    )


def update_rotation_policy(call: Call) -> dict[str, Any]:
    """UpdateRotationPolicy: automatic rotation on (7 to 730 days) or off."""
    if call.params.get("EnableAutomaticRotation") in (None, ""):
        raise missing_parameter("EnableAutomaticRotation")
    enable = parse_bool(call.params, "EnableAutomaticRotation", False)
    interval = None
    if enable:
        text = required(call.params, "RotationInterval")
        interval = parse_interval(text, "RotationInterval", 7, 730)
    with call.ring.lock:
        key = call.key()
        if enable and key.origin == "EXTERNAL":
            raise unsupported_origin()
        key.rotation_interval = interval
        call.ring.save(key)
    return {}


HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "CreateKeyVersion": create_key_version,
    "ListKeyVersions": list_key_versions,
    "DescribeKeyVersion": describe_key_version,
    "UpdateRotationPolicy": update_rotation_policy,
}
