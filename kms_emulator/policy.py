"""Principals (access keys) and what each may do."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    """An access key pair with the API actions and keys it may use ("*" = any)."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    actions: frozenset[str] = frozenset({"*"})
    keys: frozenset[str] = frozenset({"*"})
