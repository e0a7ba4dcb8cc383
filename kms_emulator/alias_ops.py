"""Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases, ListAliasesByKeyId."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError, invalid_parameter
from envelope_mq.kms_emulator.keyring import Keyring, alias_not_found
from envelope_mq.kms_emulator.paging import page
from envelope_mq.kms_emulator.params import required
from envelope_mq.kms_emulator.request import Call

__all__ = ["ALIAS_NAME", "HANDLERS"]

# "alias/" then 1-255 of letters, digits, "_", "-" and "/"; "alias/acs" is reserved.
ALIAS_NAME = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}")


def _alias_name(call: Call) -> str:
    name = required(call.params, "AliasName")
    if not ALIAS_NAME.fullmatch(name) or name.startswith("alias/acs"):
        raise invalid_parameter(
            "AliasName",
            'Expected "alias/" and 1-255 of [A-Za-z0-9_/-], not starting "alias/acs".',
        )
    return name


def create_alias(call: Call) -> dict[str, Any]:
    """CreateAlias: a new name for a key."""
    name = _alias_name(call)
    with call.ring.lock:
        key = call.key()
        if name in call.ring.aliases:
            raise ApiError(400, "AliasAlreadyExists", "AliasName Already Exists.")
        call.ring.set_alias(name, key.key_id)
    return {}


def _authorize_existing(call: Call, name: str) -> None:
    """The alias must exist and the caller may act on the key it names now.

    Call with the keyring lock held.
    """
    current = call.ring.aliases.get(name)
    if current is None:
        raise alias_not_found()
    call.authorize(call.ring.keys[current])


def update_alias(call: Call) -> dict[str, Any]:
    """UpdateAlias: point an existing alias at another key."""
    name = _alias_name(call)
    with call.ring.lock:
        _authorize_existing(call, name)
        key = call.key()
        call.ring.set_alias(name, key.key_id)
    return {}


def delete_alias(call: Call) -> dict[str, Any]:
    """DeleteAlias: the key stays."""
    name = _alias_name(call)
    with call.ring.lock:
        _authorize_existing(call, name)
        call.ring.delete_alias(name)
    return {}


def _listing(call: Call, ring: Keyring, names: Iterable[str]) -> dict[str, Any]:
    items, fields = page(call.params, sorted(names))
    aliases = [
        {"AliasName": n, "AliasArn": ring.alias_arn(n), "KeyId": ring.aliases[n]}
        for n in items
    ]
    return {"Aliases": {"Alias": aliases}, **fields}


def list_aliases(call: Call) -> dict[str, Any]:
    """ListAliases: every alias, by name, paged."""
    with call.ring.lock:
        call.ring.sweep()
        return _listing(call, call.ring, call.ring.aliases)


def list_aliases_by_key_id(call: Call) -> dict[str, Any]:
    """ListAliasesByKeyId: the aliases of one key, by name, paged."""
    with call.ring.lock:
        key = call.key()
        return _listing(call, call.ring, call.ring.aliases_by_key.get(key.key_id, ()))


HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "CreateAlias": create_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
    "ListAliases": list_aliases,
    "ListAliasesByKeyId": list_aliases_by_key_id,
}
