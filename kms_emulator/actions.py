"""The API's operations: action name → handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envelope_mq.kms_emulator import alias_ops, crypto_ops, key_ops, version_ops
from envelope_mq.kms_emulator.request import Call

__all__ = ["ACTIONS", "HANDLERS"]

HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    **crypto_ops.HANDLERS,
    **key_ops.HANDLERS,
    **version_ops.HANDLERS,
    **alias_ops.HANDLERS,
}
ACTIONS = frozenset(HANDLERS)
