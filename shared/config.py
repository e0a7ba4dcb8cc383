"""Settings, read from the environment once, in entrypoints only.

Library code never reads ``os.environ``: it takes a :class:`Settings` (or plain
arguments). Tests pass a dict to :meth:`Settings.from_env`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from envelope_mq.shared.errors import ConfigError

__all__ = [
    "DEFAULT_RABBITMQ_URL",
    "MAX_DATA_KEY_MESSAGES",
    "CredentialSettings",
    "Settings",
]

# guest/guest only works from localhost: a development default, never production's.
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REGION_ID = "cn-hangzhou"
# NIST SP 800-38D §8.3: at most 2^32 invocations of GCM with random 96-bit nonces
# per key. The limit is not configurable above it.
MAX_DATA_KEY_MESSAGES = 2**32


@dataclass(frozen=True)
class CredentialSettings:
    """Where the credential chain looks, beside an AccessKey in Settings.

    The names are alibabacloud-credentials' own environment variables, read
    here once so that the library's chain is built from them (the library
    itself would read them only once, when first imported), plus
    ``ALIBABA_CLOUD_STS_ENDPOINT``: the STS that OIDC and RAM roles ask.
    """

    role_arn: str | None = None
    oidc_provider_arn: str | None = None
    oidc_token_file: str | None = None
    role_session_name: str | None = None
    sts_endpoint: str | None = None
    profile: str | None = None
    credentials_file: str | None = None
    cli_profile_disabled: bool = False
    ecs_role_name: str | None = None
    ecs_metadata_disabled: bool = False
    imds_v1_disabled: bool = False
    credentials_uri: str | None = None
    home: str | None = None  # where ~/.aliyun and ~/.alibabacloud are

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CredentialSettings:
        """Read the ``ALIBABA_CLOUD_*`` variables of the chain from ``env``."""

        def text(name: str) -> str | None:
            return env.get(f"ALIBABA_CLOUD_{name}") or None

        def flag(name: str) -> bool:
            return (env.get(f"ALIBABA_CLOUD_{name}") or "").lower() == "true"

        return cls(
            role_arn=text("ROLE_ARN"),
            oidc_provider_arn=text("OIDC_PROVIDER_ARN"),
            oidc_token_file=text("OIDC_TOKEN_FILE"),
            role_session_name=text("ROLE_SESSION_NAME"),
            sts_endpoint=text("STS_ENDPOINT"),
            profile=text("PROFILE"),
            credentials_file=text("CREDENTIALS_FILE"),
            cli_profile_disabled=flag("CLI_PROFILE_DISABLED"),
            ecs_role_name=text("ECS_METADATA"),
            ecs_metadata_disabled=flag("ECS_METADATA_DISABLED"),
            imds_v1_disabled=flag("IMDSV1_DISABLED"),
            credentials_uri=text("CREDENTIALS_URI"),
            home=env.get("HOME") or None,
        )


@dataclass(frozen=True)
class Settings:
    """Everything the services need to know, with local development defaults."""

    # The URLs carry the broker passwords.
    rabbitmq_urls: tuple[str, ...] = field(default=(DEFAULT_RABBITMQ_URL,), repr=False)
    kms_endpoint: str | None = None
    kms_key_id: str | None = None
    # A KMS 3.0 instance's dedicated gateway, used instead of kms_endpoint:
    # https://<instance-id>.cryptoservice.kms.aliyuncs.com (its CA: kms_ca_file).
    kms_instance_endpoint: str | None = None
    # PEM CA bundle to trust for the KMS endpoint instead of the system's
    # (a KMS 3.0 dedicated gateway, or the emulator with --tls).
    kms_ca_file: str | None = None
    region_id: str = DEFAULT_REGION_ID
    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    # Without an AccessKey above: the rest of the alibabacloud-credentials chain.
    credential_chain: CredentialSettings = field(default_factory=CredentialSettings)
    # More than one KMS region (shared/regions.py). Endpoints of other
    # regions' KMS, by region id; a region not listed is reached at its
    # public endpoint kms.<region>.aliyuncs.com.
    kms_region_endpoints: tuple[tuple[str, str], ...] = ()
    # A reader's regions, in the order it asks them (empty: region_id first,
    # then those of kms_region_endpoints).
    kms_regions: tuple[str, ...] = ()
    # A writer's extra copies of every data key: (region, master key id).
    kms_wrap_also: tuple[tuple[str, str], ...] = ()
    # A writer refuses a data key it could not wrap in every region.
    kms_require_all_copies: bool = False
    data_key_max_age: float = 300.0
    data_key_max_messages: int = 2**24
    key_cache_size: int = 1024
    key_cache_ttl: float = 3600.0
    # The wire format producers write (docs/wire-format.md); readers open both.
    wire_version: int = 2

    def __post_init__(self) -> None:
        if not self.rabbitmq_urls:
            raise ConfigError("RABBITMQ_URL must name at least one broker")
        if not 1 <= self.data_key_max_messages <= MAX_DATA_KEY_MESSAGES:
            raise ConfigError(
                "EMQ_DATA_KEY_MAX_MESSAGES must be between 1 and 2**32 "
                "(NIST SP 800-38D bound for random 96-bit nonces)"
            )
        # "not > 0" also refuses nan, which passes every comparison.
        if not self.data_key_max_age > 0:
            raise ConfigError("EMQ_DATA_KEY_MAX_AGE must be positive")
        if self.key_cache_size < 1:
            raise ConfigError("EMQ_KEY_CACHE_SIZE must be at least 1")
        if not self.key_cache_ttl > 0:
            raise ConfigError("EMQ_KEY_CACHE_TTL must be positive")
        regions = [r for r, _ in self.kms_region_endpoints]
        if len(set(regions)) != len(regions):
            raise ConfigError("KMS_REGION_ENDPOINTS names a region twice")
        if len(set(self.kms_regions)) != len(self.kms_regions):
            raise ConfigError("KMS_REGIONS names a region twice")
        for name, pairs in (
            ("KMS_REGION_ENDPOINTS", self.kms_region_endpoints),
            ("KMS_WRAP_ALSO", self.kms_wrap_also),
        ):
            if not all(region and value for region, value in pairs):
                raise ConfigError(f"{name} takes REGION=VALUE,... (none empty)")
        if not all(self.kms_regions):
            raise ConfigError("KMS_REGIONS takes REGION,REGION,... (none empty)")
        if self.wire_version not in (1, 2):
            raise ConfigError("EMQ_WIRE_VERSION must be 1 or 2")
        if self.wire_version == 1 and self.kms_wrap_also:
            raise ConfigError(
                "KMS_WRAP_ALSO needs wire format 2: v1 carries one wrapped copy"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (``os.environ`` when omitted)."""
        env = os.environ if environ is None else environ
        urls = tuple(
            u.strip()
            for u in (env.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL).split(",")
            if u.strip()
        )
        return cls(
            rabbitmq_urls=urls,
            kms_endpoint=env.get("KMS_ENDPOINT") or None,
            kms_key_id=env.get("KMS_KEY_ID") or None,
            kms_instance_endpoint=env.get("KMS_INSTANCE_ENDPOINT") or None,
            kms_ca_file=env.get("KMS_CA_FILE") or None,
            region_id=env.get("ALIBABA_CLOUD_REGION_ID") or DEFAULT_REGION_ID,
            access_key_id=env.get("ALIBABA_CLOUD_ACCESS_KEY_ID") or None,
            access_key_secret=env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET") or None,
            security_token=env.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None,
            credential_chain=CredentialSettings.from_env(env),
            kms_region_endpoints=_pairs(env, "KMS_REGION_ENDPOINTS"),
            kms_regions=_names(env, "KMS_REGIONS"),
            kms_wrap_also=_pairs(env, "KMS_WRAP_ALSO"),
            kms_require_all_copies=_flag(env, "KMS_REQUIRE_ALL_COPIES"),
            data_key_max_age=_number(env, "EMQ_DATA_KEY_MAX_AGE", 300.0),
            data_key_max_messages=_integer(env, "EMQ_DATA_KEY_MAX_MESSAGES", 2**24),
            key_cache_size=_integer(env, "EMQ_KEY_CACHE_SIZE", 1024),
            key_cache_ttl=_number(env, "EMQ_KEY_CACHE_TTL", 3600.0),
            wire_version=_integer(env, "EMQ_WIRE_VERSION", 2),
        )


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """``a,b,c`` -> ("a", "b", "c"); blanks around names dropped."""
    return tuple(n.strip() for n in (env.get(name) or "").split(",") if n.strip())


def _pairs(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``a=x,b=y`` -> (("a", "x"), ("b", "y")), in the order written."""
    pairs = []
    for item in _names(env, name):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{name} takes REGION=VALUE,..., got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # "nan" would pass every range check
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
