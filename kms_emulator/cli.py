"""``envelope-mq kms-emulator`` (or ``python -m envelope_mq.kms_emulator``): the KMS.

On a first run with no seed the emulator creates one key under ``--key-alias`` and,
in strict mode, one all-powerful principal from KMS_EMULATOR_ACCESS_KEY_ID and
KMS_EMULATOR_ACCESS_KEY_SECRET. It prints the endpoint and the KeyId, never a secret.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from envelope_mq.kms_emulator.emulator import Emulator
from envelope_mq.kms_emulator.errors import ApiError, EmulatorError
from envelope_mq.kms_emulator.service import KmsService

__all__ = ["ACCESS_KEY_ID_ENV", "ACCESS_KEY_SECRET_ENV", "main", "register", "run"]

ACCESS_KEY_ID_ENV = "KMS_EMULATOR_ACCESS_KEY_ID"
ACCESS_KEY_SECRET_ENV = "KMS_EMULATOR_ACCESS_KEY_SECRET"  # noqa: S105 (a name)
ADMIN_TOKEN_ENV = "KMS_EMULATOR_ADMIN_TOKEN"  # noqa: S105 (a name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's flags (shared by both entry points)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8600, help="port (0: any free)")
    parser.add_argument(
        "--data", metavar="PATH", help="data directory (default: memory)"
    )
    parser.add_argument("--seed", metavar="FILE", help="YAML/JSON seed file")
    parser.add_argument(
        "--auth",
        choices=("strict", "off"),
        default="strict",
        help="strict: verify every signature (default); off: for debugging only",
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="serve /admin/ (reset, rotate, faults) to callers sending "
        f"'Authorization: Bearer <token>': the token is {ADMIN_TOKEN_ENV}, or "
        "made at start and written to --admin-token-file (else printed)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="with --admin: write the generated admin token here (mode 0600)",
    )
    parser.add_argument(
        "--admin-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name /admin/ answers to (its Host header is checked "
        "against the emulator's own names; e.g. the compose service name)",
    )
    parser.add_argument(
        "--key-alias",
        default="alias/envelope-mq",
        help="without --seed: alias of the key created on first run",
    )
    parser.add_argument(
        "--region", default="cn-hangzhou", help="region the emulator answers for"
    )
    tls = parser.add_argument_group("HTTPS")
    tls.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS; without --tls-cert/--tls-key a fresh CA and a "
        "certificate for 127.0.0.1, ::1, localhost and --host are generated",
    )
    tls.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--tls-ca-out",
        metavar="FILE",
        help="write the generated CA's certificate here (what KMS_CA_FILE takes); "
        "default: a temporary file, printed in the banner",
    )
    tls.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP for the generated certificate (repeatable)",
    )
    gateway = parser.add_argument_group("dedicated gateway (KMS 3.0 instance)")
    gateway.add_argument(
        "--instance-id",
        metavar="kst-...",
        help="act as this instance's dedicated gateway: HTTPS only (implies "
        "--tls), <id>.cryptoservice.kms.aliyuncs.com in the certificate, "
        "data-plane operations only, an instance QPS quota, and a CONNECT "
        "proxy that resolves the instance host name here",
    )
    gateway.add_argument(
        "--instance-qps",
        type=float,
        default=1000.0,
        metavar="QPS",
        help="the instance's spec (1000, 2000 or 4000); over it: 429 "
        "Rejected.Throttling (default 1000)",
    )
    parser.add_argument(
        "--qps-quota",
        type=float,
        metavar="QPS",
        help="the account's quota of symmetric crypto operations per second "
        "(the shared gateway's is 1000); over it: 429 Rejected.Throttling. "
        "Default: unmetered",
    )
    parser.add_argument(
        "--ecs-role",
        metavar="ROLE",
        help="serve this seeded role's credentials as an ECS instance's metadata "
        "service does (IMDSv2 only) on --ecs-metadata-address",
    )
    parser.add_argument(
        "--ecs-metadata-address",
        default="100.100.100.200:80",
        metavar="HOST:PORT",
        help="where the metadata service listens (default 100.100.100.200:80, "
        "the real address: give it to a loopback in a network namespace)",
    )
    parser.add_argument(
        "--sts-lifetime",
        type=float,
        metavar="SECONDS",
        help="every STS credential lives this long, whatever DurationSeconds "
        "asks (short for tests of expiry and refresh)",
    )
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="shift the emulator's clock (e.g. 1200: every client looks 20 min "
        "behind); for testing clock skew",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="INFO logs one audit line per request",
    )
    parser.set_defaults(run=run)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``kms-emulator`` subcommand of ``envelope-mq``."""
    parser = subparsers.add_parser(
        "kms-emulator",
        help="run the local Alibaba Cloud KMS",
        description="A local Alibaba Cloud KMS 2016-01-20 for development and tests.",
    )
    add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m envelope_mq.kms_emulator``."""
    parser = argparse.ArgumentParser(
        prog="kms-emulator", description="A local Alibaba Cloud KMS 2016-01-20."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Start the emulator and serve until SIGINT or SIGTERM; the exit code."""
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    access_key_id = environ.get(ACCESS_KEY_ID_ENV, "")
    secret = environ.get(ACCESS_KEY_SECRET_ENV, "")
    if bool(access_key_id) != bool(secret):
        return _fail(f"set both {ACCESS_KEY_ID_ENV} and {ACCESS_KEY_SECRET_ENV}")
    if args.sts_lifetime is not None and not 0 < args.sts_lifetime < 86400:
        return _fail("--sts-lifetime must be between 0 and 86400 seconds")
    meta_host, _, meta_port = args.ecs_metadata_address.rpartition(":")
    if not meta_host or not meta_port.isdigit():
        return _fail("--ecs-metadata-address must be HOST:PORT")
    metadata_address = (meta_host.strip("[]"), int(meta_port))
    if args.instance_id is not None:
        args.tls = True
    if not 0 < args.instance_qps < 1e9:
        return _fail("--instance-qps must be a positive number")
    if args.qps_quota is not None and not 0 < args.qps_quota < 1e9:
        return _fail("--qps-quota must be a positive number")
    if not math.isfinite(args.clock_offset):
        return _fail("--clock-offset must be a finite number of seconds")
    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("--tls-cert and --tls-key go together")
    if not args.tls and (args.tls_cert or args.tls_ca_out or args.tls_name):
        return _fail("--tls-cert, --tls-key, --tls-ca-out and --tls-name need --tls")
    if args.tls_cert and (args.tls_ca_out or args.tls_name):
        return _fail("--tls-ca-out and --tls-name are for a generated certificate")
    admin_token = environ.get(ADMIN_TOKEN_ENV) or None
    if admin_token is not None and len(admin_token) < 16:
        return _fail(f"{ADMIN_TOKEN_ENV} must have at least 16 characters")
    if (args.admin_token_file or args.admin_host) and not args.admin:
        return _fail("--admin-token-file and --admin-host need --admin")
    seed: str | dict[str, Any] | None = args.seed
    if seed is None and access_key_id:
        seed = {
            "principals": [
                {
                    "access_key_id": access_key_id,
                    "access_key_secret": secret,
                    "actions": ["*"],
                    "keys": ["*"],
                }
            ]
        }
    if seed is None and args.auth == "strict":
        return _fail(
            "strict authentication needs credentials: set "
            f"{ACCESS_KEY_ID_ENV} and {ACCESS_KEY_SECRET_ENV}, pass --seed FILE "
            "(principals), or run with --auth off"
        )
    emulator = Emulator(
        seed=seed,
        auth=args.auth,
        admin=args.admin,
        data=args.data,
        host=args.host,
        port=args.port,
        region_id=args.region,
        clock_offset=args.clock_offset,
        tls=args.tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_names=args.tls_name,
        tls_ca_out=args.tls_ca_out,
        admin_token=admin_token,
        admin_hosts=args.admin_host,
        sts_lifetime=args.sts_lifetime,
        qps_quota=args.qps_quota,
        instance_id=args.instance_id,
        instance_qps=args.instance_qps,
        ecs_role=args.ecs_role,
        ecs_metadata_address=metadata_address,
    )
    try:
        emulator.start()
        if args.admin and args.admin_token_file and admin_token is None:
            _write_private(args.admin_token_file, emulator.admin_token + "\n")
    except (EmulatorError, OSError, ValueError) as exc:  # SSLError is an OSError
        emulator.stop()
        return _fail(str(exc))
    try:
        key_line = ""
        if args.seed is None:
            key_line = _ensure_key(emulator.service, args.key_alias)
        _banner(emulator, args, access_key_id, key_line, admin_token is not None)
        _wait_for_signal()
    except ApiError as exc:
        return _fail(f"could not create the first key: {exc.code}: {exc.message}")
    finally:
        emulator.stop()
    return 0


def _ensure_key(service: KmsService, alias: str) -> str:
    """The KeyId behind ``alias``, creating key and alias on first run."""
    try:
        found = service.call("DescribeKey", {"KeyId": alias}, None)
    except ApiError as exc:
        if exc.code != "Forbidden.AliasNotFound":
            raise
        created = service.call(
            "CreateKey", {"Description": "created by kms-emulator on first run"}, None
        )
        key_id = str(created["KeyMetadata"]["KeyId"])
        service.call("CreateAlias", {"AliasName": alias, "KeyId": key_id}, None)
        return f"KMS_KEY_ID={alias} (KeyId {key_id}, created now)"
    return f"KMS_KEY_ID={alias} (KeyId {found['KeyMetadata']['KeyId']})"


def _banner(
    emulator: Emulator,
    args: argparse.Namespace,
    access_key_id: str,
    key_line: str,
    environ_token: bool,
) -> None:
    lines = [
        f"kms-emulator listening on {emulator.url} "
        f"(auth {args.auth}, admin {'on' if args.admin else 'off'}, "
        f"data {args.data or 'in memory'})",
        *(
            [f"  clock shifted by {args.clock_offset:+g} s (--clock-offset)"]
            if args.clock_offset
            else []
        ),
        f"  KMS_ENDPOINT={emulator.url if args.tls else emulator.endpoint}",
    ]
    if emulator.ca_file is not None:
        lines.append(f"  KMS_CA_FILE={emulator.ca_file}")
    if emulator.instance_host is not None:
        lines.append(
            f"  dedicated gateway https://{emulator.instance_host}: reach it through "
            f"HTTPS_PROXY={emulator.gateway_proxy} (a CONNECT proxy to this port)"
        )
    if key_line:
        lines.append(f"  {key_line}")
    seed = emulator.service.seed
    for role in seed.roles if seed else ():
        if role.credentials_uri:
            lines.append(
                f"  ALIBABA_CLOUD_CREDENTIALS_URI={emulator.credentials_uri(role.name)}"
            )
    if args.admin:
        if environ_token:
            where = f"the value of {ADMIN_TOKEN_ENV}"
        elif args.admin_token_file:
            where = f"written to {args.admin_token_file}"
        else:  # made for this run, guarding only this emulator's /admin/
            where = emulator.admin_token
        lines.append(f"  /admin/ token: {where}")
    if access_key_id:
        lines.append(
            f"  ALIBABA_CLOUD_ACCESS_KEY_ID={access_key_id} "
            f"(secret: the value of {ACCESS_KEY_SECRET_ENV})"
        )
    lines.append("  ready; stop with Ctrl-C or SIGTERM")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _write_private(path: str, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as out:
        out.write(text)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass


def _fail(message: str) -> int:
    print(f"kms-emulator: {message}", file=sys.stderr)
    return 1
