"""The audit log: one line per API request, never key material or plaintext.

Lines go to the ``envelope_mq.kms_emulator.audit`` logger at INFO. Only identifiers are
logged (access key id, Action, KeyId, result code); parameter values such as
Plaintext, CiphertextBlob or EncryptionContext never reach this module.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["AUDIT_LOGGER", "audit", "resolved_key_id"]

AUDIT_LOGGER = logging.getLogger("envelope_mq.kms_emulator.audit")

# Values come from the client, so anything outside this set is replaced:
# a newline in an Action must not forge a second audit line.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+=-]")
_MAX_FIELD = 128


def _clean(value: str | None) -> str:
    if not value:
        return "-"
    return _UNSAFE.sub("?", value[:_MAX_FIELD])


def resolved_key_id(body: Mapping[str, Any] | None, params: Mapping[str, str]) -> str:
    """The KeyId a request acted on: from the answer if any, else as requested."""
    if body:
        for holder in (body, body.get("KeyMetadata"), body.get("KeyVersion")):
            if isinstance(holder, Mapping) and isinstance(holder.get("KeyId"), str):
                return str(holder["KeyId"])
    return params.get("KeyId") or params.get("DestinationKeyId") or ""


def audit(
    *,
    access_key_id: str | None,
    action: str | None,
    key_id: str | None,
    code: str,
    status: int,
    started: float,
    request_id: str,
) -> None:
    """Log one request; ``started`` is its ``time.perf_counter()`` at arrival."""
    if not AUDIT_LOGGER.isEnabledFor(logging.INFO):
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    AUDIT_LOGGER.info(
        "%s.%03dZ ak=%s action=%s key=%s result=%s status=%d ms=%.1f request=%s",
        stamp,
        int(now * 1000) % 1000,
        _clean(access_key_id),
        _clean(action),
        _clean(key_id),
        _clean(code),
        status,
        (time.perf_counter() - started) * 1000.0,
        request_id,
    )
