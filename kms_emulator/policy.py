"""Principals (access keys) and what each may do.

A principal lists the API actions it may call and the keys it may use them on,
each "*" for any. A key entry matches by key id, key ARN or any current alias
("alias/<name>"). Actions that name no key (CreateKey, ListKeys, ListAliases)
need only the action; DescribeRegions needs nothing, as in Alibaba's RAM.
A denial is HTTP 403 ``Forbidden.NoPermission``, the code KMS returns when RAM
refuses a call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envelope_mq.kms_emulator.errors import ApiError

__all__ = ["UNGUARDED_ACTIONS", "Principal", "deny"]

UNGUARDED_ACTIONS = frozenset({"DescribeRegions"})


@dataclass(frozen=True)
class Principal:
    """An access key pair with the API actions and keys it may use ("*" = any)."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    actions: frozenset[str] = frozenset({"*"})
    keys: frozenset[str] = frozenset({"*"})
    # Temporary credentials issued by STS: the token that must come with them
    # and when they stop working (emulator clock); None for AccessKeys.
    security_token: str | None = field(default=None, repr=False)
    expires: float | None = None
    role_arn: str | None = None

    def may_call(self, action: str) -> bool:
        """Whether the principal may call ``action`` at all."""
        return (
            action in UNGUARDED_ACTIONS or "*" in self.actions or action in self.actions
        )

    def may_use(self, names: Iterable[str]) -> bool:
        """Whether any of a key's names (id, ARN, aliases) is granted."""
        if "*" in self.keys:
            return True
        return any(name in self.keys for name in names)


def deny(principal: Principal, action: str, resource: str) -> ApiError:
    """The 403 answer when ``principal`` may not do ``action`` on ``resource``."""
    return ApiError(
        403,
        "Forbidden.NoPermission",
        f"The AccessKey {principal.access_key_id} is not authorized to perform "
        f"kms:{action} on {resource}.",
    )
