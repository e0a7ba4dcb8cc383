"""Naming a master key: key id, ``alias/NAME`` or ARN, and when two names agree.

KMS names a key in three ways; Decrypt and GenerateDataKey answer with the
bare KeyId. :func:`same_key` compares a name a message claims with the KeyId
KMS reported, without a KMS call: a key ARN (``acs:kms:REGION:UID:key/ID``)
means its ID; an alias names no key by itself (it can be moved to another key
at any time), so it never matches a KeyId. Aliases are resolved once, at start,
where an operator names keys (``AliyunKms.describe_key_id``).
"""

from __future__ import annotations

__all__ = ["key_id_of", "same_key"]

_ARN_PREFIX = "acs:kms:"
_KEY_RESOURCE = "key/"


def key_id_of(name: str) -> str:
    """The KeyId ``name`` stands for: the id of a key ARN, anything else as is."""
    if name.startswith(_ARN_PREFIX):
        resource = name.rsplit(":", 1)[-1]
        if resource.startswith(_KEY_RESOURCE) and len(resource) > len(_KEY_RESOURCE):
            return resource[len(_KEY_RESOURCE) :]
    return name


def same_key(claimed: str, verified: str) -> bool:
    """Whether ``claimed`` (a message's header) names the KeyId KMS ``verified``."""
    if claimed == verified:  # every message of a key id sender: no parsing
        return bool(claimed)
    return bool(claimed) and key_id_of(claimed) == key_id_of(verified)
