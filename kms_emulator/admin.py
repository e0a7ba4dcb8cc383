"""Operator endpoints under ``/admin/`` (served only with ``--admin``).

They sit outside the RPC space and its signatures, so they carry their own
guard (:class:`AdminAccess`): a bearer token made for the run, and, against a
web page the operator happens to open, the ``Host`` must be one of the
emulator's own names (DNS rebinding) and an ``Origin``, when sent, its own.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.faults import FaultSettings
from envelope_mq.kms_emulator.reply import Reply

if TYPE_CHECKING:
    from envelope_mq.kms_emulator.gateway import Gateway

__all__ = ["AdminAccess", "AdminRoutes"]

_ROTATE = re.compile(r"/admin/keys/([^/]{1,256})/rotate")


@dataclass(frozen=True)
class AdminAccess:
    """Who may use ``/admin/``: the token, and the Host/Origin values accepted."""

    token: str = field(repr=False)
    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def for_names(
        cls, token: str, names: Iterable[str], port: int, scheme: str
    ) -> AdminAccess:
        """Accept ``Host: <name>:<port>`` (and the bare name on a default port)."""
        hosts: set[str] = set()
        for name in names:
            shown = f"[{name}]" if ":" in name else name  # an IPv6 address
            hosts.add(f"{shown}:{port}".lower())
            if port == (443 if scheme == "https" else 80):
                hosts.add(shown.lower())
        origins = frozenset(f"{scheme}://{host}" for host in hosts)
        return cls(token, frozenset(hosts), origins)

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise the ApiError that refuses this request, if any."""
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            raise ApiError(
                403,
                "Forbidden.AdminHost",
                "The Host header is not one of the emulator's own names.",
            )
        origin = headers.get("origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            raise ApiError(
                403,
                "Forbidden.AdminOrigin",
                "Cross-origin requests to /admin/ are refused.",
            )
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise ApiError(
                401,
                "InvalidAdminToken",
                "Send the emulator's admin token as 'Authorization: Bearer <token>'.",
            )


class AdminRoutes:
    """reset, rotate a key now, faults and request statistics."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """Answer one admin request (headers have lower-case names)."""
        g = self._gateway
        try:
            if g.admin_access is None:  # not started yet: refuse, never open
                raise ApiError(503, "ServiceUnavailable", "Not ready.")
            g.admin_access.check(headers)
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
