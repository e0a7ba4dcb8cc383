"""STS 2015-04-01: temporary credentials for the seed's RAM roles.

``AssumeRole`` (signed by an AccessKey the role trusts), ``AssumeRoleWithOIDC``
(anonymous, an OIDC token from a provider the role trusts, as ACK's RRSA
sends it) and ``GetCallerIdentity``; plus the credentials-URI answer that
``ALIBABA_CLOUD_CREDENTIALS_URI`` clients read. Issued credentials live in
memory only: after a restart their tokens are unknown (Malformed), as a token
from another account would be.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError, invalid_parameter
from envelope_mq.kms_emulator.oidc import OidcProvider
from envelope_mq.kms_emulator.params import required
from envelope_mq.kms_emulator.policy import Principal
from envelope_mq.kms_emulator.seed import RoleSeed, Seed

__all__ = ["STS_VERSION", "StsService"]

STS_VERSION = "2015-04-01"
_MIN_DURATION = 900
_KEEP_EXPIRED = 3600.0  # expired tokens still answer "Expired" for an hour
_MAX_ISSUED = 100_000


def _format(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class StsService:
    """The roles and providers of one seed, and the credentials issued for them.

    ``lifetime`` (seconds), when set, replaces every DurationSeconds: tests use
    it for credentials that expire within the test.
    """

    def __init__(
        self,
        seed: Seed | None,
        account_id: str,
        clock: Callable[[], float],
        *,
        lifetime: float | None = None,
    ) -> None:
        self._roles = {r.arn: r for r in (seed.roles if seed else ())}
        self._providers: dict[str, OidcProvider] = {
            p.arn: p for p in (seed.oidc_providers if seed else ())
        }
        self._account_id = account_id
        self._clock = clock
        self.lifetime = lifetime
        # A capability in the credentials-URI path: whoever may read the URI
        # may have the role's credentials, like a metadata endpoint.
        self.uri_token = secrets.token_urlsafe(24)
        self._by_token: dict[str, Principal] = {}
        self._by_key: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def principal(self, access_key_id: str) -> Principal | None:
        """Temporary credentials issued under ``access_key_id``, if any."""
        with self._lock:
            return self._by_key.get(access_key_id)

    def holder(self, security_token: str) -> Principal | None:
        """The credentials ``security_token`` was issued with, if any."""
        with self._lock:
            return self._by_token.get(security_token)

    def role_by_name(self, name: str) -> RoleSeed | None:
        """The role whose ARN ends in ``/name``."""
        return next((r for r in self._roles.values() if r.name == name), None)

    def call(
        self, action: str, params: Mapping[str, str], caller: Principal | None
    ) -> dict[str, Any]:
        """One STS action; ``caller`` None: unsigned (AssumeRoleWithOIDC, auth off)."""
        if action == "AssumeRole":
            return self._assume_role(params, caller)
        if action == "AssumeRoleWithOIDC":
            return self._assume_role_with_oidc(params)
        if action == "GetCallerIdentity":
            return self._caller_identity(caller)
        raise ApiError(
            400,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )

    def credentials_for_uri(self, role_name: str) -> dict[str, Any]:
        """The JSON a credentials URI answers for ``role_name``."""
        role = self.role_by_name(role_name)
        if role is None or not role.credentials_uri:
            raise ApiError(404, "EntityNotExist.Role", "The role is not served here.")
        return self.session_credentials(role, "credentials-uri")

    def session_credentials(self, role: RoleSeed, session: str) -> dict[str, Any]:
        """Fresh credentials for ``role`` in the flat shape metadata services use."""
        credentials = self._issue(role, session, role.max_session_duration)
        return {
            "Code": "Success",
            "LastUpdated": _format(self._clock()),
            **credentials["Credentials"],
        }

    def _assume_role(
        self, params: Mapping[str, str], caller: Principal | None
    ) -> dict[str, Any]:
        role = self._role(required(params, "RoleArn"))
        if caller is not None and not (
            "*" in role.assumable_by or caller.access_key_id in role.assumable_by
        ):
            raise _no_permission()
        return self._issue(
            role, _session_name(params), _duration(params, role.max_session_duration)
        )

    def _assume_role_with_oidc(self, params: Mapping[str, str]) -> dict[str, Any]:
        provider_arn = required(params, "OIDCProviderArn")
        provider = self._providers.get(provider_arn)
        if provider is None:
            raise ApiError(
                404,
                "EntityNotExist.OIDCProvider",
                "The specified OIDC provider does not exist.",
            )
        role = self._role(required(params, "RoleArn"))
        claims = provider.verify(required(params, "OIDCToken"), self._clock())
        if role.oidc_provider != provider_arn or (
            role.oidc_subjects and claims.subject not in role.oidc_subjects
        ):
            raise _no_permission()
        answer = self._issue(
            role, _session_name(params), _duration(params, role.max_session_duration)
        )
        answer["OIDCTokenInfo"] = {
            "Issuer": claims.issuer,
            "Subject": claims.subject,
            "ClientIds": ",".join(claims.audiences),
        }
        return answer

    def _caller_identity(self, caller: Principal | None) -> dict[str, Any]:
        if caller is None:
            return {"AccountId": self._account_id, "IdentityType": "Account"}
        identity: dict[str, Any] = {
            "AccountId": self._account_id,
            "AccessKeyId": caller.access_key_id,
            "IdentityType": "AssumedRoleUser" if caller.role_arn else "RAMUser",
        }
        if caller.role_arn:
            identity["RoleId"] = caller.role_arn.rsplit("/", 1)[-1]
        return identity

    def _role(self, arn: str) -> RoleSeed:
        role = self._roles.get(arn)
        if role is None:
            raise ApiError(404, "EntityNotExist.Role", "The specified Role not exists.")
        return role

    def _issue(self, role: RoleSeed, session: str, duration: int) -> dict[str, Any]:
        now = self._clock()
        expires = now + (self.lifetime if self.lifetime is not None else duration)
        token = "CAIS" + secrets.token_urlsafe(120)
        principal = Principal(
            access_key_id="STS.NT" + secrets.token_urlsafe(18).replace("-", "x"),
            access_key_secret=secrets.token_urlsafe(30),
            actions=role.actions,
            keys=role.keys,
            security_token=token,
            expires=expires,
            role_arn=role.arn,
        )
        with self._lock:
            self._prune(now)
            if len(self._by_key) >= _MAX_ISSUED:
                raise ApiError(
                    400, "Throttling", "Too many temporary credentials are active."
                )
            self._by_key[principal.access_key_id] = principal
            self._by_token[token] = principal
        return {
            "AssumedRoleUser": {
                "Arn": f"{role.arn}/{session}",
                "AssumedRoleId": f"{role.name}:{session}",
            },
            "Credentials": {
                "AccessKeyId": principal.access_key_id,
                "AccessKeySecret": principal.access_key_secret,
                "SecurityToken": principal.security_token,
                "Expiration": _format(expires),
            },
        }

    def _prune(self, now: float) -> None:
        stale = [
            p
            for p in self._by_key.values()
            if p.expires is not None and p.expires + _KEEP_EXPIRED < now
        ]
        for principal in stale:
            del self._by_key[principal.access_key_id]
            self._by_token.pop(principal.security_token or "", None)


def _session_name(params: Mapping[str, str]) -> str:
    name = params.get("RoleSessionName") or "emulator-session"
    if not 2 <= len(name) <= 64 or not all(c.isalnum() or c in "._@-" for c in name):
        raise invalid_parameter("RoleSessionName", "2 to 64 of A-Za-z0-9._@-")
    return name


def _duration(params: Mapping[str, str], longest: int) -> int:
    text = params.get("DurationSeconds") or "3600"
    try:
        value = int(text)
    except ValueError:
        raise invalid_parameter("DurationSeconds") from None
    if not _MIN_DURATION <= value <= longest:
        raise ApiError(
            400,
            "InvalidParameter.DurationSeconds",
            f"The DurationSeconds must be between {_MIN_DURATION} and {longest}.",
        )
    return value


def _no_permission() -> ApiError:
    return ApiError(
        403,
        "NoPermission",
        "You are not authorized to do this action. You should be authorized by RAM.",
    )
