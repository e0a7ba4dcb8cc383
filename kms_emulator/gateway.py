"""The request pipeline behind the HTTP server: parse, fault, authenticate, dispatch.

It knows nothing of sockets: ``Gateway.handle`` takes a method, a target, headers
and a body and returns a ``Reply``, so the HTTP layer stays a thin adapter.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from envelope_mq.kms_emulator.admin import AdminAccess, AdminRoutes
from envelope_mq.kms_emulator.audit import audit, resolved_key_id
from envelope_mq.kms_emulator.auth import SIGNATURE_PARAMS, Authenticator, SignedRequest
from envelope_mq.kms_emulator.errors import (
    ApiError,
    invalid_parameter,
    missing_parameter,
)
from envelope_mq.kms_emulator.faults import Faults, Outcome
from envelope_mq.kms_emulator.instance import (
    DATA_PLANE_ACTIONS,
    instance_host,
    unsupported_here,
)
from envelope_mq.kms_emulator.policy import Principal
from envelope_mq.kms_emulator.quota import METERED_ACTIONS, QpsLimiter, throttled
from envelope_mq.kms_emulator.reply import Reply, error_reply
from envelope_mq.kms_emulator.service import KmsService
from envelope_mq.kms_emulator.sts import STS_VERSION, StsService

__all__ = ["API_VERSION", "Gateway"]

API_VERSION = "2016-01-20"
# Parameters every RPC request carries that are not the operation's own.
_COMMON = SIGNATURE_PARAMS | {"Action", "Version", "Format", "RegionId"}
_MAX_FIELDS = 256
_URI_PREFIX = "/sts/credentials/"
_MAX_ACTIONS = 128
_LOG = logging.getLogger("envelope_mq.kms_emulator.server")


class Gateway:
    """One emulator's request pipeline; thread-safe, shared by every connection."""

    def __init__(
        self,
        service: KmsService,
        *,
        authenticator: Authenticator | None,
        faults: Faults,
        admin: bool,
        region_id: str,
        sts: StsService | None = None,
        quotas: tuple[QpsLimiter, ...] = (),
        instance_id: str | None = None,
    ) -> None:
        self.service = service
        self.sts = sts
        # Account-wide and, on a dedicated gateway, per-instance meters.
        self.quotas = quotas
        self.authenticator = authenticator
        self.faults = faults
        self.instance_id = instance_id
        self.host_id = (
            instance_host(instance_id)
            if instance_id is not None
            else f"kms.{region_id}.aliyuncs.com"
        )
        self._admin = AdminRoutes(self) if admin else None
        # Set by the server's owner once the address is known.
        self.admin_access: AdminAccess | None = None
        self._counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    @property
    def request_count(self) -> dict[str, int]:
        """RPC requests answered so far, by Action."""
        with self._count_lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        """Start counting from zero."""
        with self._count_lock:
            self._counts.clear()

    def _count(self, action: str | None) -> None:
        with self._count_lock:
            # Action names come from the client: cap the distinct names kept.
            if action not in self._counts and len(self._counts) >= _MAX_ACTIONS:
                action = None
            self._counts[action or "-"] += 1

    def error(
        self, status: int, code: str, message: str, request_id: str = ""
    ) -> Reply:
        """An error reply in the API's JSON shape."""
        return error_reply(
            status, code, message, host_id=self.host_id, request_id=request_id
        )

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """Answer one HTTP request (headers have lower-case names)."""
        try:
            parts = urlsplit(target)
        except ValueError:
            return self.error(400, "InvalidParameter", "The request URL is not valid.")
        if parts.path == "/":
            if method not in ("GET", "POST"):
                return self.error(405, "MethodNotAllowed", "Use GET or POST on /.")
            return self._rpc(method, parts.query, headers, body)
        if parts.path == "/healthz" and method == "GET":
            return Reply(200, {"Status": "OK"})
        if parts.path.startswith(_URI_PREFIX) and self.sts is not None:
            return self._credentials_uri(self.sts, method, parts.path, parts.query)
        if self._admin is not None and parts.path.startswith("/admin/"):
            return self._admin.handle(method, parts.path, headers, body)
        return self.error(404, "NotFound", "The requested path is not served.")

    def _credentials_uri(
        self, sts: StsService, method: str, path: str, query: str
    ) -> Reply:
        """GET /sts/credentials/<role>?token=...: what a credentials URI answers."""
        if method != "GET":
            return self.error(405, "MethodNotAllowed", "Use GET on this path.")
        given = dict(parse_qsl(query)).get("token", "")
        if not hmac.compare_digest(given.encode(), sts.uri_token.encode()):
            return self.error(403, "Forbidden", "The credentials URI token is wrong.")
        try:
            return Reply(200, sts.credentials_for_uri(path[len(_URI_PREFIX) :]))
        except ApiError as exc:
            return self.error(exc.status, exc.code, exc.message)

    def _rpc(
        self, method: str, query_text: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        started = time.perf_counter()
        delay, outcome = self.faults.decide()
        if outcome is Outcome.OUTAGE:
            return Reply(0, abort=True)
        request_id = str(uuid.uuid4())
        action: str | None = None
        principal: Principal | None = None
        params: dict[str, str] = {}
        answer: dict[str, Any] | None = None
        try:
            query = _parse_pairs(query_text, "query string")
            params = dict(query)
            if _is_form(headers) and body:
                form = _parse_pairs(_text(body), "form body")
                repeated = form.keys() & query.keys()
                if repeated:
                    raise invalid_parameter(
                        min(repeated), "It is given more than once."
                    )
                params.update(form)
            action = params.get("Action") or headers.get("x-acs-action") or None
            self._count(action)
            if delay:
                time.sleep(delay)
            _raise_fault(outcome)
            if action is None:
                raise missing_parameter("Action")
            version = params.get("Version") or headers.get("x-acs-version")
            if not version:
                raise missing_parameter("Version")
            sts = version == STS_VERSION and self.sts is not None
            if version != API_VERSION and not sts:
                raise invalid_parameter("Version", f"Only {API_VERSION} is served.")
            # AssumeRoleWithOIDC is unsigned: the OIDC token is the credential.
            if self.authenticator is not None and not (
                sts and action == "AssumeRoleWithOIDC"
            ):
                principal = self.authenticator.authenticate(
                    SignedRequest(method, params, query, headers, body)
                )
            if (
                not sts
                and self.instance_id is not None
                and action not in DATA_PLANE_ACTIONS
            ):
                raise unsupported_here(action)
            if not sts and action in METERED_ACTIONS:
                # Every meter takes its token: the account's quota and the
                # instance's both count a request.
                spent = [quota.allow() for quota in self.quotas]
                if not all(spent):
                    raise throttled()
            api_params = {k: v for k, v in params.items() if k not in _COMMON}
            if sts and self.sts is not None:
                answer = self.sts.call(action, api_params, principal)
            else:
                answer = self.service.call(action, api_params, principal)
            reply = Reply(200, {"RequestId": request_id, **answer})
            code = "OK"
        except ApiError as exc:
            reply = self.error(exc.status, exc.code, exc.message, request_id)
            code = exc.code
        except Exception:
            # Never a traceback on the wire; the log gets it, without parameters.
            _LOG.exception("internal failure in %r (RequestId %s)", action, request_id)
            reply = self.error(500, "InternalFailure", "Internal Failure.", request_id)
            code = "InternalFailure"
        audit(
            access_key_id=principal.access_key_id if principal else None,
            action=action,
            key_id=resolved_key_id(answer, params),
            code=code,
            status=reply.status,
            started=started,
            request_id=request_id,
        )
        return reply


def _raise_fault(outcome: Outcome) -> None:
    if outcome is Outcome.THROTTLE:
        raise throttled()
    if outcome is Outcome.UNAVAILABLE:
        raise ApiError(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        )


def _is_form(headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() in (
        "application/x-www-form-urlencoded",
        "",
    )


def _text(body: bytes) -> str:
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(
            400, "InvalidParameter", "The form body must be URL-encoded ASCII."
        ) from None


def _parse_pairs(text: str, where: str) -> dict[str, str]:
    """Decode ``a=b&c=d`` strictly: bad UTF-8 or a repeated name is rejected."""
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError included
        raise ApiError(
            400, "InvalidParameter", f"The {where} is not valid URL-encoded UTF-8."
        ) from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise invalid_parameter(name, "It is given more than once.")
        params[name] = value
    return params
