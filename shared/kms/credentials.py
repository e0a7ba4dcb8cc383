"""Where KMS credentials come from: the ``alibabacloud-credentials`` providers.

Every current Alibaba SDK finds its credentials through that library; so do we.
Its providers do the work (profiles in every mode, STS AssumeRole and
AssumeRoleWithOIDC, instance metadata over IMDSv2, credentials URIs, refreshing
temporary credentials before they expire); this module only picks them, in the
library's own default order, from a :class:`CredentialSettings` read once by
the entrypoint. Its types and exceptions stay here: callers hold a
:class:`Credentials` and ask it for the :class:`AccessKey` of each request, so a
process that outlives a temporary credential signs with the refreshed one.

The default chain, first source that yields credentials wins (it is then kept):

1. ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``_SECRET`` (+ ``ALIBABA_CLOUD_SECURITY_TOKEN``)
2. OIDC / RRSA: ``ALIBABA_CLOUD_ROLE_ARN``, ``ALIBABA_CLOUD_OIDC_PROVIDER_ARN``,
   ``ALIBABA_CLOUD_OIDC_TOKEN_FILE`` (as ACK injects them): STS AssumeRoleWithOIDC
3. the aliyun CLI's ``~/.aliyun/config.json``: ``ALIBABA_CLOUD_PROFILE`` or its
   current profile, in any mode (AK, StsToken, RamRoleArn, EcsRamRole, OIDC...)
4. the INI file ``ALIBABA_CLOUD_CREDENTIALS_FILE`` or
   ``~/.alibabacloud/credentials.ini``
5. the ECS instance's RAM role from instance metadata (IMDSv2 first), unless
   ``ALIBABA_CLOUD_ECS_METADATA_DISABLED=true``
6. ``ALIBABA_CLOUD_CREDENTIALS_URI``
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_credentials.provider import (
    CLIProfileCredentialsProvider,
    EcsRamRoleCredentialsProvider,
    OIDCRoleArnCredentialsProvider,
    ProfileCredentialsProvider,
    RamRoleArnCredentialsProvider,
    StaticAKCredentialsProvider,
    StaticSTSCredentialsProvider,
    URLCredentialsProvider,
)
from alibabacloud_credentials_api import ICredentialsProvider
from envelope_mq.shared.config import CredentialSettings, Settings
from envelope_mq.shared.errors import ConfigError, KmsCallerError, KmsUnavailableError

__all__ = ["CHAIN_HELP", "AccessKey", "Credentials", "parse_sts_endpoint"]

#: The chain in one paragraph, for the commands' --help.
CHAIN_HELP = (
    "KMS credentials, first match wins: ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET "
    "(+ ALIBABA_CLOUD_SECURITY_TOKEN); OIDC/RRSA (ALIBABA_CLOUD_ROLE_ARN, "
    "_OIDC_PROVIDER_ARN, _OIDC_TOKEN_FILE; STS at ALIBABA_CLOUD_STS_ENDPOINT); the "
    "aliyun CLI's ~/.aliyun/config.json (ALIBABA_CLOUD_PROFILE or its current "
    "profile, any mode); ~/.alibabacloud/credentials.ini; the ECS instance's RAM "
    "role; ALIBABA_CLOUD_CREDENTIALS_URI. Temporary credentials are renewed "
    "before they expire."
)

NO_CREDENTIALS = "EMQ.NoCredentials"
CREDENTIALS_UNAVAILABLE = "EMQ.CredentialsUnavailable"
CLI_CONFIG = Path(".aliyun") / "config.json"
INI_FILE = Path(".alibabacloud") / "credentials.ini"
# STS takes at least 900 s; the library asks for an hour and refreshes 15
# minutes before the end.
_SESSION_NAME = "envelope-mq"


@dataclass(frozen=True)
class AccessKey:
    """The credential to sign one request with; secrets stay out of the repr."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


class Credentials:
    """A source of the current :class:`AccessKey`, refreshed by the library.

    ``source`` names where the credentials come from (never a secret).
    """

    def __init__(self, provider: ICredentialsProvider, source: str) -> None:
        self._provider = provider
        self.source = source

    def __repr__(self) -> str:
        return f"Credentials({self.source})"

    def current(self) -> AccessKey:
        """The credential for the next request (fetched or refreshed if due).

        Raises:
            KmsUnavailableError: temporary credentials could not be fetched now
                (STS, instance metadata or the credentials URI did not answer
                as expected); the same call may succeed later.
            KmsCallerError: no source in the chain has any credentials
                (``EMQ.NoCredentials``): nothing is at fault but the set-up.
        """
        try:
            found = self._provider.get_credentials()
        except _NoSource as exc:
            raise KmsCallerError(
                str(exc), code=NO_CREDENTIALS, cause="no credentials configured"
            ) from None
        # The library raises what its HTTP stack raises too (Tea's RetryError
        # for a refused connection...): whatever it is, it stays here.
        except Exception as exc:
            raise KmsUnavailableError(
                f"KMS credentials from {self.source} are unavailable: {_reason(exc)}",
                code=CREDENTIALS_UNAVAILABLE,
            ) from None
        key_id, secret = found.get_access_key_id(), found.get_access_key_secret()
        if not key_id or not secret:
            raise KmsUnavailableError(
                f"KMS credentials from {self.source} have no AccessKey",
                code=CREDENTIALS_UNAVAILABLE,
            )
        return AccessKey(key_id, secret, found.get_security_token() or None)

    @classmethod
    def static(
        cls, access_key_id: str, access_key_secret: str, security_token: str = ""
    ) -> Credentials:
        """A fixed AccessKey pair, or an STS token with its temporary pair."""
        if not access_key_id or not access_key_secret:
            raise ConfigError("an AccessKey needs both its id and its secret")
        if security_token:
            return cls(
                StaticSTSCredentialsProvider(
                    access_key_id=access_key_id,
                    access_key_secret=access_key_secret,
                    security_token=security_token,
                ),
                "an STS token",
            )
        return cls(
            StaticAKCredentialsProvider(
                access_key_id=access_key_id, access_key_secret=access_key_secret
            ),
            "an AccessKey pair",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """An AccessKey in ``settings``, else the default chain (see above)."""
        if settings.access_key_id or settings.access_key_secret:
            if not settings.access_key_id or not settings.access_key_secret:
                raise ConfigError(
                    "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
                    "go together: set both (or neither, for the rest of the chain)"
                )
            pair = cls.static(
                settings.access_key_id or "",
                settings.access_key_secret or "",
                settings.security_token or "",
            )
            return cls(pair._provider, "ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET")
        return cls.chain(settings.credential_chain)

    @classmethod
    def chain(cls, settings: CredentialSettings) -> Credentials:
        """The default chain without its first step (an AccessKey)."""
        home = Path(settings.home) if settings.home else Path.home()
        steps: list[tuple[str, Callable[[], ICredentialsProvider]]] = []
        if (
            settings.role_arn
            and settings.oidc_provider_arn
            and settings.oidc_token_file
        ):
            steps.append((_OIDC_STEP, lambda: cls._oidc(settings)._provider))
        if not settings.cli_profile_disabled:
            steps.append(
                (
                    f"~/{CLI_CONFIG}",
                    lambda: CLIProfileCredentialsProvider(
                        profile_name=settings.profile or None,
                        profile_file=str(home / CLI_CONFIG),
                    ),
                )
            )
        steps.append(
            (
                "the credentials INI file",
                lambda: ProfileCredentialsProvider(
                    profile_file=settings.credentials_file or str(home / INI_FILE),
                    profile_name=settings.profile or "default",
                ),
            )
        )
        if not settings.ecs_metadata_disabled:
            steps.append(
                (
                    "the ECS RAM role",
                    lambda: EcsRamRoleCredentialsProvider(
                        role_name=settings.ecs_role_name or None,
                        disable_imds_v1=settings.imds_v1_disabled,
                        async_update_enabled=False,  # no scheduler thread of its own
                    ),
                )
            )
        if settings.credentials_uri:
            uri = settings.credentials_uri
            steps.append((_URI_STEP, lambda: URLCredentialsProvider(uri=uri)))
        return cls(_Chain(steps), "the default credential chain")

    @classmethod
    def profile(cls, name: str | None, home: Path) -> Credentials:
        """A profile of the aliyun CLI's config file, in any of its modes."""
        return cls(
            CLIProfileCredentialsProvider(
                profile_name=name, profile_file=str(home / CLI_CONFIG)
            ),
            f"profile {name or '(current)'} of ~/{CLI_CONFIG}",
        )

    @classmethod
    def ram_role(
        cls,
        base: Credentials,
        role_arn: str,
        *,
        session_name: str | None = None,
        sts_endpoint: str | None = None,
    ) -> Credentials:
        """STS AssumeRole of ``role_arn`` with ``base``'s credentials."""
        return cls(
            RamRoleArnCredentialsProvider(
                credentials_provider=base._provider,
                role_arn=role_arn,
                role_session_name=session_name or _SESSION_NAME,
                sts_endpoint=parse_sts_endpoint(sts_endpoint),
            ),
            f"role {role_arn}",
        )

    @classmethod
    def ecs_role(cls, role_name: str | None = None) -> Credentials:
        """The ECS instance's RAM role, from instance metadata."""
        return cls(
            EcsRamRoleCredentialsProvider(
                role_name=role_name, async_update_enabled=False
            ),
            "the ECS RAM role",
        )

    @classmethod
    def credentials_uri(cls, uri: str) -> Credentials:
        """Temporary credentials served at ``uri``."""
        return cls(URLCredentialsProvider(uri=uri), "the credentials URI")

    @classmethod
    def oidc(
        cls,
        role_arn: str,
        oidc_provider_arn: str,
        oidc_token_file: str,
        *,
        session_name: str | None = None,
        sts_endpoint: str | None = None,
    ) -> Credentials:
        """STS AssumeRoleWithOIDC with the token in ``oidc_token_file`` (RRSA)."""
        return cls._oidc(
            CredentialSettings(
                role_arn=role_arn,
                oidc_provider_arn=oidc_provider_arn,
                oidc_token_file=oidc_token_file,
                role_session_name=session_name,
                sts_endpoint=sts_endpoint,
            )
        )

    @classmethod
    def _oidc(cls, settings: CredentialSettings) -> Credentials:
        try:
            provider = OIDCRoleArnCredentialsProvider(
                role_arn=settings.role_arn,
                oidc_provider_arn=settings.oidc_provider_arn,
                oidc_token_file_path=settings.oidc_token_file,
                role_session_name=settings.role_session_name or _SESSION_NAME,
                sts_endpoint=parse_sts_endpoint(settings.sts_endpoint),
            )
        except ValueError as exc:
            raise ConfigError(f"OIDC credentials: {exc}") from None
        return cls(provider, f"OIDC role {settings.role_arn}")


def parse_sts_endpoint(endpoint: str | None) -> str | None:
    """``host[:port]`` for the library, which always speaks HTTPS to STS.

    ``https://`` is accepted and dropped; ``http://`` is refused: the answer
    carries a secret, and the library would send the request in the clear.
    """
    if not endpoint:
        return None
    scheme, sep, rest = endpoint.strip().partition("://")
    host = (rest if sep else scheme).rstrip("/")
    if (sep and scheme.lower() != "https") or not host or "/" in host:
        raise ConfigError(
            "ALIBABA_CLOUD_STS_ENDPOINT must be host[:port] or https://host[:port]"
        )
    return host


# Steps present only when the environment configures them.
_OIDC_STEP = "OIDC (RRSA)"
_URI_STEP = "ALIBABA_CLOUD_CREDENTIALS_URI"
_CONFIGURED = (_OIDC_STEP, _URI_STEP)


class _NoSource(CredentialException):  # type: ignore[misc]
    """No source of the chain had credentials."""


class _Chain(ICredentialsProvider):  # type: ignore[misc]
    """The library's default chain, built from our settings, not its globals.

    alibabacloud-credentials reads the environment once, when it is imported,
    and cannot be told an STS endpoint; this chain takes both from the caller
    and keeps the library's order and its "remember what worked" rule.
    Providers are made when first tried (the ECS one probes the network).
    """

    def __init__(self, steps: list[tuple[str, Callable[[], ICredentialsProvider]]]):
        self._steps = steps
        self._chosen: ICredentialsProvider | None = None

    def get_credentials(self) -> object:
        if self._chosen is not None:
            return self._chosen.get_credentials()
        tried = []
        for name, make in self._steps:
            try:
                provider = make()
                found = provider.get_credentials()
            except Exception as exc:  # as the library's own chain: try the next
                tried.append(f"{name}: {_reason(exc)}")
                continue
            if found is not None:
                self._chosen = provider
                return found
        configured = [t for t in tried if t.startswith(_CONFIGURED)]
        if configured:
            # A source the environment asked for (RRSA, a credentials URI) did
            # not answer: an outage to wait out, not a missing configuration.
            raise CredentialException("; ".join(configured))
        raise _NoSource(
            "no KMS credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET, run on ACK with RRSA or on ECS with "
            "a RAM role, or configure a profile (aliyun configure); tried "
            + "; ".join(tried)
        )

    async def get_credentials_async(self) -> object:
        return self.get_credentials()

    def get_provider_name(self) -> str:
        return "default"


# The library quotes a failed answer's body after "result:"; a URI's or STS's
# body may hold a secret, so only the sentence before it is kept.
_BODY = re.compile(r"\s*(result|response)\s*[:=].*", re.IGNORECASE | re.DOTALL)


# A credentials URI's query is a capability (whoever has it has the role), and
# the HTTP stack quotes request URLs: queries are dropped from every reason.
_QUERY = re.compile(r"\?[^\s'\")]*")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return _QUERY.sub("?...", _BODY.sub("", str(text))).strip()[:200]
