"""A KMS client for a command line: its flags, then the environment.

Credentials, first match wins:

1. flags, as the aliyun CLI spells them: ``--access-key-id`` and
   ``--access-key-secret`` (with ``--sts-token``: mode StsToken), or
   ``--mode RamRoleArn|EcsRamRole|OIDC|CredentialsURI`` with that mode's flags,
   or ``--profile NAME`` (a profile of ``~/.aliyun/config.json``, any mode);
2. the alibabacloud-credentials default chain
   (:mod:`envelope_mq.shared.kms.credentials`): ``ALIBABA_CLOUD_ACCESS_KEY_ID``
   and ``_SECRET`` (+ ``ALIBABA_CLOUD_SECURITY_TOKEN``); OIDC/RRSA; the CLI's
   current profile; the INI file; the ECS RAM role; ``ALIBABA_CLOUD_CREDENTIALS_URI``.

Region: ``--region``; ``ALIBABA_CLOUD_REGION_ID``; the CLI profile's
``region_id``; ``cn-hangzhou``. Endpoint: ``--endpoint``; ``KMS_ENDPOINT``; the
region's. CA bundle for an https endpoint: ``--ca-file``; ``KMS_CA_FILE``; the
system's. STS for roles: ``--sts-endpoint``; ``ALIBABA_CLOUD_STS_ENDPOINT``.
Secrets never appear in a repr or an error text. The caller passes the
environment in, so this module reads it only through :class:`Settings`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.kms import AliyunKms, DedicatedKms, KmsClient
from envelope_mq.shared.kms.credentials import CHAIN_HELP, Credentials

__all__ = [
    "MODES",
    "add_arguments",
    "connect",
    "connect_data_plane",
    "credentials_from_args",
]

CONFIG_PATH = Path(".aliyun") / "config.json"  # under the home directory
MODES = ("AK", "StsToken", "RamRoleArn", "EcsRamRole", "OIDC", "CredentialsURI")
# --mode: the flags each mode needs (as the aliyun CLI names them).
_NEEDS = {
    "AK": ("access_key_id", "access_key_secret"),
    "StsToken": ("access_key_id", "access_key_secret", "sts_token"),
    "RamRoleArn": ("access_key_id", "access_key_secret", "ram_role_arn"),
    "EcsRamRole": (),
    "OIDC": ("ram_role_arn", "oidc_provider_arn", "oidc_token_file"),
    "CredentialsURI": ("credentials_uri",),
}


def add_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Add the endpoint and credential flags (the aliyun CLI's spelling).

    ``suppress=True`` leaves unset flags out of the namespace, so a subcommand
    can repeat the options of its parent without overwriting them.
    """
    default = argparse.SUPPRESS if suppress else None
    where = parser.add_argument_group("endpoint")
    where.add_argument(
        "--endpoint",
        default=default,
        help="KMS endpoint: host:port (plain HTTP on loopback, e.g. the emulator) "
        "or https://host[:port]; default KMS_ENDPOINT, else the region's",
    )
    where.add_argument(
        "--ca-file",
        default=default,
        metavar="PEM",
        help="CA certificates to trust for an https endpoint instead of the "
        "system's (a dedicated gateway's CA, the emulator's --tls CA); "
        "default KMS_CA_FILE",
    )
    where.add_argument(
        "--region",
        default=default,
        help="region id, e.g. cn-hangzhou (default ALIBABA_CLOUD_REGION_ID, "
        "the profile's, cn-hangzhou)",
    )
    group = parser.add_argument_group(
        "credentials", "The flags below first; then the environment. " + CHAIN_HELP
    )
    group.add_argument(
        "--mode", default=default, choices=MODES, help="credential type, as aliyun's"
    )
    group.add_argument(
        "--profile",
        default=default,
        metavar="NAME",
        help="profile of ~/.aliyun/config.json, in any of its modes",
    )
    group.add_argument("--access-key-id", default=default, help="AccessKey ID")
    group.add_argument(
        "--access-key-secret",
        default=default,
        help="AccessKey secret (prefer the environment or a profile: "
        "flags show up in the process list)",
    )
    group.add_argument(
        "--sts-token", default=default, help="STS security token (mode StsToken)"
    )
    group.add_argument(
        "--ram-role-arn", default=default, help="role to assume (RamRoleArn, OIDC)"
    )
    group.add_argument(
        "--role-session-name", default=default, help="session name for the role"
    )
    group.add_argument(
        "--ram-role-name", default=default, help="ECS instance RAM role (EcsRamRole)"
    )
    group.add_argument("--oidc-provider-arn", default=default, help="mode OIDC")
    group.add_argument(
        "--oidc-token-file", default=default, help="OIDC token file (mode OIDC)"
    )
    group.add_argument("--credentials-uri", default=default, help="mode CredentialsURI")
    group.add_argument(
        "--sts-endpoint",
        default=default,
        help="STS host[:port] for RamRoleArn and OIDC, always over HTTPS "
        "(default ALIBABA_CLOUD_STS_ENDPOINT, else the library's)",
    )


def connect(
    args: argparse.Namespace, environ: Mapping[str, str], **options: Any
) -> AliyunKms:
    """An AliyunKms client for the command line ``args`` over ``environ``."""
    settings = Settings.from_env(environ)
    sts = _flag(args, "sts_endpoint")
    if sts:
        settings = replace(
            settings,
            credential_chain=replace(settings.credential_chain, sts_endpoint=sts),
        )
    flag = _flag(args, "endpoint")
    return AliyunKms(
        region_id=_region(args, environ, settings),
        credentials=credentials_from_args(args, settings),
        endpoint=flag or settings.kms_endpoint,
        endpoint_name="--endpoint" if flag else "KMS_ENDPOINT",
        ca_bundle=_flag(args, "ca_file") or settings.kms_ca_file,
        **options,
    )


def connect_data_plane(
    args: argparse.Namespace, environ: Mapping[str, str], **options: Any
) -> KmsClient:
    """Like :func:`connect`, but a KMS 3.0 instance's dedicated gateway when
    KMS_INSTANCE_ENDPOINT names one (for commands that only generate and
    decrypt data keys, as seal and unseal do)."""
    settings = Settings.from_env(environ)
    instance = settings.kms_instance_endpoint
    if not instance:
        return connect(args, environ, **options)
    return DedicatedKms(
        instance,
        credentials_from_args(args, settings),
        ca_file=_flag(args, "ca_file") or settings.kms_ca_file,
        region_id=_region(args, environ, settings),
        **options,
    )


def credentials_from_args(args: argparse.Namespace, settings: Settings) -> Credentials:
    """Credentials from the flags, else from ``settings`` (module docstring)."""
    sts = settings.credential_chain.sts_endpoint
    profile = _flag(args, "profile")
    mode = _flag(args, "mode")
    if mode is None:
        if _flag(args, "access_key_id") or _flag(args, "access_key_secret"):
            mode = "StsToken" if _flag(args, "sts_token") else "AK"
        elif profile is not None:
            return Credentials.profile(profile, _home(settings))
        else:
            return Credentials.from_settings(settings)
    missing = [f"--{n.replace('_', '-')}" for n in _NEEDS[mode] if not _flag(args, n)]
    if missing:
        raise ConfigError(f"--mode {mode} needs {' and '.join(missing)}")
    if mode in ("AK", "StsToken"):
        return Credentials.static(
            _flag(args, "access_key_id") or "",
            _flag(args, "access_key_secret") or "",
            _flag(args, "sts_token") or "" if mode == "StsToken" else "",
        )
    if mode == "RamRoleArn":
        base = Credentials.static(
            _flag(args, "access_key_id") or "", _flag(args, "access_key_secret") or ""
        )
        return Credentials.ram_role(
            base,
            _flag(args, "ram_role_arn") or "",
            session_name=_flag(args, "role_session_name"),
            sts_endpoint=sts,
        )
    if mode == "EcsRamRole":
        return Credentials.ecs_role(_flag(args, "ram_role_name"))
    if mode == "OIDC":
        return Credentials.oidc(
            _flag(args, "ram_role_arn") or "",
            _flag(args, "oidc_provider_arn") or "",
            _flag(args, "oidc_token_file") or "",
            session_name=_flag(args, "role_session_name"),
            sts_endpoint=sts,
        )
    return Credentials.credentials_uri(_flag(args, "credentials_uri") or "")


def _flag(args: argparse.Namespace, name: str) -> str | None:
    value = getattr(args, name, None)
    return value if isinstance(value, str) and value else None


def _home(settings: Settings) -> Path:
    home = settings.credential_chain.home
    return Path(home) if home else Path.home()


def _region(
    args: argparse.Namespace, environ: Mapping[str, str], settings: Settings
) -> str:
    """--region, ALIBABA_CLOUD_REGION_ID, the CLI profile's region_id, default."""
    region = _flag(args, "region") or environ.get("ALIBABA_CLOUD_REGION_ID")
    if region:
        return region
    name = _flag(args, "profile") or settings.credential_chain.profile
    return _profile_region(_home(settings) / CONFIG_PATH, name) or settings.region_id


def _profile_region(path: Path, name: str | None) -> str | None:
    """The profile's region_id: the one thing the credential library never reads."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the credential chain reports an unusable file
    if not isinstance(config, dict):
        return None
    wanted = name or config.get("current")
    for profile in config.get("profiles") or []:
        if isinstance(profile, dict) and profile.get("name") == wanted:
            region = profile.get("region_id")
            return region if isinstance(region, str) and region else None
    return None
