"""Operator endpoints under ``/admin/`` (served only with ``--admin``).

They sit outside the RPC space and carry no authentication: ``--admin`` is for
local development and tests, behind 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.faults import FaultSettings
from envelope_mq.kms_emulator.reply import Reply

if TYPE_CHECKING:
    from envelope_mq.kms_emulator.gateway import Gateway

__all__ = ["AdminRoutes"]

_ROTATE = re.compile(r"/admin/keys/([^/]{1,256})/rotate")


class AdminRoutes:
    """reset, rotate a key now, faults and request statistics."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def handle(self, method: str, path: str, body: bytes) -> Reply:
        """Answer one admin request."""
        g = self._gateway
        try:
            if path == "/admin/reset":
                _expect(method, "POST")
                g.service.reset()
                return Reply(200, {"Status": "OK"})
            if path == "/admin/faults":
                if method == "GET":
                    return Reply(200, {"Faults": g.faults.snapshot()})
                if method == "DELETE":
                    g.faults.clear()
                    return Reply(200, {"Faults": g.faults.snapshot()})
                _expect(method, "POST")
                g.faults.apply(_fault_settings(body))
                return Reply(200, {"Faults": g.faults.snapshot()})
            if path == "/admin/stats":
                if method == "DELETE":
                    g.reset_counts()
                else:
                    _expect(method, "GET")
                counts = g.request_count
                return Reply(200, {"Requests": counts, "Total": sum(counts.values())})
            match = _ROTATE.fullmatch(path)
            if match is not None:
                _expect(method, "POST")
                key_id = unquote(match.group(1))
                version_id = g.service.rotate_now(key_id)
                return Reply(200, {"KeyId": key_id, "KeyVersionId": version_id})
        except ApiError as exc:
            return g.error(exc.status, exc.code, exc.message)
        return g.error(404, "NotFound", "The requested path is not served.")


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError(405, "MethodNotAllowed", f"Use {allowed} on this path.")


def _fault_settings(body: bytes) -> FaultSettings:
    try:
        data: Any = json.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return FaultSettings.from_mapping(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise ApiError(
            400, "InvalidParameter", f"The fault settings are not valid: {exc}"
        ) from None
