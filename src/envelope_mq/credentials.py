"""KMS credentials, region and endpoint, resolved the way the official tools do.

Order, first match wins, for each of the three things:

- access key (id and secret, always from one place): ``--access-key-id`` and
  ``--access-key-secret``; the profile named by ``--profile``;
  ``ALIBABA_CLOUD_ACCESS_KEY_ID`` and ``ALIBABA_CLOUD_ACCESS_KEY_SECRET``; the
  current profile of the aliyun CLI's ``~/.aliyun/config.json``;
- region: ``--region``; ``ALIBABA_CLOUD_REGION_ID``; the profile's
  ``region_id``; ``cn-hangzhou``;
- endpoint: ``--endpoint``; ``KMS_ENDPOINT``; none (the regional endpoint);
- CA bundle for an https endpoint: ``--ca-file``; ``KMS_CA_FILE``; the system's.

An explicit ``--profile`` is a flag, so it beats the environment, as the AWS
and aliyun CLIs have it. Only ``AK`` profiles are supported. Secrets never
appear in a repr or an error text. The caller passes the environment and the
home directory in, so this module reads neither on its own.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envelope_mq.shared.config import DEFAULT_REGION_ID
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.kms import AliyunKms

__all__ = [
    "Credentials",
    "Flags",
    "add_arguments",
    "connect",
    "flags_from_args",
    "resolve",
]

ID_ENV = "ALIBABA_CLOUD_ACCESS_KEY_ID"
SECRET_ENV = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"  # noqa: S105 (a variable name)
REGION_ENV = "ALIBABA_CLOUD_REGION_ID"
ENDPOINT_ENV = "KMS_ENDPOINT"
CA_FILE_ENV = "KMS_CA_FILE"
CONFIG_PATH = Path(".aliyun") / "config.json"  # under the home directory


@dataclass(frozen=True)
class Flags:
    """What the command line said (None: not given)."""

    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint: str | None = None
    profile: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class Credentials:
    """Everything needed to reach KMS; ``source`` says where the key came from."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    region_id: str
    endpoint: str | None
    source: str
    ca_file: str | None = None


def add_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Add --endpoint, --region, --access-key-id, --access-key-secret, --profile.

    ``suppress=True`` leaves unset flags out of the namespace, so a subcommand
    can repeat the options of its parent without overwriting them.
    """
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group(
        "credentials and endpoint",
        "flags, then ALIBABA_CLOUD_* / KMS_ENDPOINT, then ~/.aliyun/config.json",
    )
    group.add_argument(
        "--endpoint",
        default=default,
        help="KMS endpoint: host:port (plain HTTP, e.g. the emulator) or https://host",
    )
    group.add_argument(
        "--ca-file",
        default=default,
        metavar="PEM",
        help="CA certificates to trust for an https endpoint instead of the "
        "system's (a dedicated gateway's CA, the emulator's --tls CA); "
        "default KMS_CA_FILE",
    )
    group.add_argument("--region", default=default, help="region id, e.g. cn-hangzhou")
    group.add_argument("--access-key-id", default=default, help="AccessKey ID")
    group.add_argument(
        "--access-key-secret",
        default=default,
        help="AccessKey secret (prefer the environment or a profile: "
        "flags show up in the process list)",
    )
    group.add_argument(
        "--profile",
        default=default,
        metavar="NAME",
        help="profile of ~/.aliyun/config.json (default: its current profile)",
    )


def flags_from_args(args: argparse.Namespace) -> Flags:
    """The credential flags of a parsed command line."""
    return Flags(
        access_key_id=getattr(args, "access_key_id", None),
        access_key_secret=getattr(args, "access_key_secret", None),
        region=getattr(args, "region", None),
        endpoint=getattr(args, "endpoint", None),
        profile=getattr(args, "profile", None),
        ca_file=getattr(args, "ca_file", None),
    )


def resolve(flags: Flags, environ: Mapping[str, str], home: Path) -> Credentials:
    """Resolve credentials, region and endpoint; see the module docstring.

    Raises:
        ConfigError: no access key anywhere, half of one, a missing or
            unsupported profile, or an unreadable config file.
    """
    profiles = _Profiles(home / CONFIG_PATH, flags.profile)
    if flags.access_key_id or flags.access_key_secret:
        key_id, secret = _pair(
            flags.access_key_id,
            flags.access_key_secret,
            "--access-key-id",
            "--access-key-secret",
        )
        source = "command-line flags"
    elif flags.profile is not None:
        key_id, secret, source = profiles.access_key()
    elif environ.get(ID_ENV) or environ.get(SECRET_ENV):
        key_id, secret = _pair(
            environ.get(ID_ENV), environ.get(SECRET_ENV), ID_ENV, SECRET_ENV
        )
        source = "environment"
    elif profiles.exists():
        key_id, secret, source = profiles.access_key()
    else:
        raise ConfigError(
            "no KMS credentials: pass --access-key-id and --access-key-secret, set "
            f"{ID_ENV} and {SECRET_ENV}, or configure a profile in ~/{CONFIG_PATH} "
            "(aliyun configure)"
        )
    region = flags.region or environ.get(REGION_ENV) or profiles.region()
    endpoint = flags.endpoint or environ.get(ENDPOINT_ENV) or None
    return Credentials(
        access_key_id=key_id,
        access_key_secret=secret,
        region_id=region or DEFAULT_REGION_ID,
        endpoint=endpoint,
        source=source,
        ca_file=flags.ca_file or environ.get(CA_FILE_ENV) or None,
    )


def connect(credentials: Credentials, **options: Any) -> AliyunKms:
    """An AliyunKms client for ``credentials`` (options go to its constructor)."""
    return AliyunKms(
        credentials.access_key_id,
        credentials.access_key_secret,
        credentials.region_id,
        endpoint=credentials.endpoint,
        ca_bundle=credentials.ca_file,
        **options,
    )


def _pair(
    key_id: str | None, secret: str | None, id_name: str, secret_name: str
) -> tuple[str, str]:
    if not key_id or not secret:
        raise ConfigError(f"{id_name} and {secret_name} go together: set both")
    return key_id, secret


class _Profiles:
    """The aliyun CLI's config file, read at most once and only when needed."""

    def __init__(self, path: Path, name: str | None) -> None:
        self._path = path
        self._name = name
        self._loaded: dict[str, Any] | None = None

    def exists(self) -> bool:
        return self._path.is_file()

    def access_key(self) -> tuple[str, str, str]:
        profile = self._profile(required=True)
        name = profile.get("name", "")
        mode = profile.get("mode") or "AK"
        if mode != "AK":
            raise ConfigError(
                f"profile {name!r} in ~/{CONFIG_PATH} uses mode {mode!r}; "
                "only AK profiles are supported"
            )
        key_id, secret = profile.get("access_key_id"), profile.get("access_key_secret")
        if (
            not isinstance(key_id, str)
            or not isinstance(secret, str)
            or not key_id
            or not secret
        ):
            raise ConfigError(
                f"profile {name!r} in ~/{CONFIG_PATH} has no access_key_id and "
                "access_key_secret"
            )
        return key_id, secret, f"profile {name!r} in ~/{CONFIG_PATH}"

    def region(self) -> str | None:
        if self._name is None and not self.exists():
            return None
        region = self._profile(required=self._name is not None).get("region_id")
        return region if isinstance(region, str) and region else None

    def _profile(self, *, required: bool) -> dict[str, Any]:
        config = self._config()
        wanted = (
            self._name if self._name is not None else config.get("current") or "default"
        )
        for profile in config.get("profiles") or []:
            if isinstance(profile, dict) and profile.get("name") == wanted:
                return profile
        if required:
            raise ConfigError(f"no profile {wanted!r} in ~/{CONFIG_PATH}")
        return {}

    def _config(self) -> dict[str, Any]:
        if self._loaded is None:
            try:
                loaded = json.loads(self._path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"~/{CONFIG_PATH} does not exist") from None
            except (OSError, ValueError) as exc:
                # Never the content: the file holds secrets.
                raise ConfigError(f"~/{CONFIG_PATH} cannot be read as JSON") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"~/{CONFIG_PATH} is not a JSON object")
            self._loaded = loaded
        return self._loaded
