"""``envelope-mq kms <command>``: the KMS 2016-01-20 operations from the shell.

Each command is one API action with options named after its parameters
(``--key-id`` is ``KeyId``), and answers to the aliyun CLI's spelling too
(``DescribeKey --KeyId``). The answer is the service's JSON, pretty-printed,
or cut down by ``--query`` / ``--output`` (see envelope_mq.kms_output);
an error prints its Code, Message and RequestId and exits 1. Calls go through
:class:`shared.kms.AliyunKms`, so they meet the one error mapping and the same
retry rules as the services. Works against the emulator and the real service
alike; see envelope_mq.credentials for where the credentials come from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envelope_mq import credentials, kms_output, shred_cli
from envelope_mq.shared.errors import KmsError, MessagingError

__all__ = [
    "COMMANDS",
    "Command",
    "Param",
    "json_context",
    "print_kms_error",
    "register",
    "run",
]


@dataclass(frozen=True)
class Param:
    """One API parameter as a command-line option."""

    name: str  # the API's name, e.g. KeyId; the flag is --key-id
    help: str
    required: bool = False
    kind: Callable[[str], object] = str


@dataclass(frozen=True)
class Command:
    """One subcommand: an API action and its parameters."""

    name: str
    action: str
    help: str
    params: tuple[Param, ...] = ()
    # Safe to send twice: AliyunKms may then retry a timed-out call.
    idempotent: bool = False


def json_context(text: str) -> dict[str, str]:
    """argparse type of an EncryptionContext: a JSON object of str to str."""
    value = _json(text)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise argparse.ArgumentTypeError('expected a JSON object of strings: {"k":"v"}')
    return value


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None


def _boolean(text: str) -> object:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError("expected true or false")
    return lowered == "true"


def _integer(text: str) -> object:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    return value


_KEY_ID = Param("KeyId", "key id, alias/NAME or key ARN", required=True)
_CONTEXT = Param(
    "EncryptionContext",
    'JSON object bound to the ciphertext, e.g. {"k":"v"}',
    kind=json_context,
)
_KEY_SPEC = Param("KeySpec", "AES_256 (default) or AES_128")
_BYTES = Param(
    "NumberOfBytes",
    "data key length in bytes, 1-1024 (wins over --key-spec)",
    kind=_integer,
)
_PAGE_NUMBER = Param("PageNumber", "page to return, from 1", kind=_integer)
_PAGE_SIZE = Param("PageSize", "entries per page, 1-100", kind=_integer)
_ROTATION = Param(
    "RotationInterval", "rotation period: <n>d, <n>h, <n>m or <n>s, e.g. 365d"
)
_BLOB = Param(
    "CiphertextBlob",
    "ciphertext as Encrypt or GenerateDataKey returned it",
    required=True,
)

COMMANDS: tuple[Command, ...] = (
    Command(
        "create-key",
        "CreateKey",
        "Create a master key (symmetric AES-256 unless --key-spec says otherwise).",
        (
            Param("Description", "free text"),
            Param("KeySpec", "Aliyun_AES_256 (default), Aliyun_AES_128, ..."),
            Param("KeyUsage", "ENCRYPT/DECRYPT (default) or SIGN/VERIFY"),
            Param("ProtectionLevel", "SOFTWARE (default) or HSM"),
            Param("Origin", "Aliyun_KMS (default) or EXTERNAL"),
            Param("EnableAutomaticRotation", "true or false", kind=_boolean),
            _ROTATION,
        ),
    ),
    Command(
        "describe-key", "DescribeKey", "Show a master key's metadata.", (_KEY_ID,), True
    ),
    Command(
        "list-keys",
        "ListKeys",
        "List master keys, a page at a time.",
        (
            _PAGE_NUMBER,
            _PAGE_SIZE,
            Param(
                "Filters",
                'JSON filter, e.g. [{"Key":"KeyState","Values":["Enabled"]}]',
                kind=_json,
            ),
        ),
        True,
    ),
    Command(
        "encrypt",
        "Encrypt",
        "Encrypt up to 6 KB of text under a master key.",
        (_KEY_ID, Param("Plaintext", "the text to encrypt", required=True), _CONTEXT),
        True,
    ),
    Command(
        "decrypt",
        "Decrypt",
        "Decrypt a CiphertextBlob (the key is named inside it).",
        (_BLOB, _CONTEXT),
        True,
    ),
    Command(
        "generate-data-key",
        "GenerateDataKey",
        "Generate a data key: its plaintext (base64) and its wrapped CiphertextBlob.",
        (_KEY_ID, _KEY_SPEC, _BYTES, _CONTEXT),
        True,
    ),
    Command(
        "generate-data-key-without-plaintext",
        "GenerateDataKeyWithoutPlaintext",
        "Generate a data key and return only its wrapped CiphertextBlob.",
        (_KEY_ID, _KEY_SPEC, _BYTES, _CONTEXT),
        True,
    ),
    Command(
        "re-encrypt",
        "ReEncrypt",
        "Decrypt a CiphertextBlob and encrypt it again under another master key.",
        (
            _BLOB,
            Param("DestinationKeyId", "master key to encrypt under", required=True),
            Param(
                "SourceEncryptionContext",
                "context it was encrypted with",
                kind=json_context,
            ),
            Param(
                "DestinationEncryptionContext", "context to bind now", kind=json_context
            ),
        ),
        True,
    ),
    Command(
        "enable-key", "EnableKey", "Enable a disabled master key.", (_KEY_ID,), True
    ),
    Command(
        "disable-key",
        "DisableKey",
        "Disable a master key: it can no longer encrypt or decrypt.",
        (_KEY_ID,),
        True,
    ),
    Command(
        "schedule-key-deletion",
        "ScheduleKeyDeletion",
        "Schedule a master key for deletion after a waiting period.",
        (
            _KEY_ID,
            Param("PendingWindowInDays", "days before deletion, 7-366", True, _integer),
        ),
    ),
    Command(
        "cancel-key-deletion",
        "CancelKeyDeletion",
        "Cancel a scheduled deletion; the key is enabled again.",
        (_KEY_ID,),
    ),
    Command(
        "create-alias",
        "CreateAlias",
        "Give a master key an alias (alias/NAME).",
        (Param("AliasName", "alias/NAME", required=True), _KEY_ID),
    ),
    Command(
        "list-aliases",
        "ListAliases",
        "List aliases, a page at a time.",
        (_PAGE_NUMBER, _PAGE_SIZE),
        True,
    ),
    Command(
        "create-key-version",
        "CreateKeyVersion",
        "Create a new version of a master key and make it primary.",
        (_KEY_ID,),
    ),
    Command(
        "list-key-versions",
        "ListKeyVersions",
        "List the versions of a master key.",
        (_KEY_ID, _PAGE_NUMBER, _PAGE_SIZE),
        True,
    ),
    Command(
        "update-rotation-policy",
        "UpdateRotationPolicy",
        "Turn automatic rotation of a master key on or off.",
        (
            _KEY_ID,
            Param("EnableAutomaticRotation", "true or false", True, _boolean),
            _ROTATION,
        ),
        True,
    ),
)


def flag(name: str) -> str:
    """The option for an API parameter: KeyId -> --key-id."""
    words = "".join(f"-{c.lower()}" if c.isupper() else c for c in name)
    return "-" + words


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``envelope-mq kms`` and its subcommands, in both spellings."""
    parser = subparsers.add_parser(
        "kms",
        help="call Alibaba Cloud KMS (or the emulator) from the shell",
        description="Call one KMS 2016-01-20 API action and print its JSON answer. "
        "Works against the local emulator and the real service alike.",
        epilog="Every command also answers to its API name with the API's own "
        "parameter names, as the aliyun CLI spells them: "
        "'envelope-mq kms DescribeKey --KeyId alias/x' is "
        "'envelope-mq kms describe-key --key-id alias/x' (one spelling per command).",
    )
    _add_common(parser)
    commands = parser.add_subparsers(
        dest="kms_command", metavar="COMMAND", required=True
    )
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=f"{command.help} KMS API action: {command.action}.",
            allow_abbrev=False,
        )
        _add_params(sub, command, kebab=True)
        # The API spelling is a parser of its own (left out of the listing, which
        # would show every command twice): it knows only --PascalCase options, so
        # a command cannot mix the two spellings, as the aliyun CLI rules.
        api = commands.add_parser(
            command.action,
            description=f"{command.help} Same as 'envelope-mq kms {command.name}', "
            "with the API's parameter names.",
            allow_abbrev=False,
        )
        _add_params(api, command, kebab=False)
    # Crypto-shredding: two API calls each, so commands of their own.
    shred_cli.register_commands(commands, lambda p: _add_common(p, suppress=True))


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    credentials.add_arguments(parser, suppress=suppress)
    kms_output.add_arguments(parser, suppress=suppress)


def _add_params(
    parser: argparse.ArgumentParser, command: Command, *, kebab: bool
) -> None:
    for param in command.params:
        option = flag(param.name) if kebab else f"--{param.name}"
        parser.add_argument(
            option,
            dest=param.name,
            metavar=flag(param.name)[2:].replace("-", "_").upper(),
            required=param.required,
            type=param.kind,
            help=param.help,
        )
    _add_common(parser, suppress=True)
    parser.set_defaults(run=run, kms=command)


def run(args: argparse.Namespace) -> int:
    """Call the chosen action and print its answer; the exit code."""
    command: Command = args.kms
    params = {
        p.name: getattr(args, p.name)
        for p in command.params
        if getattr(args, p.name) is not None
    }
    try:
        kms = credentials.connect(args, os.environ)
        body = kms.call(command.action, params, idempotent=command.idempotent)
    except KmsError as err:
        print_kms_error(err)
        return 1
    except MessagingError as err:
        print(f"envelope-mq kms: {err}", file=sys.stderr)
        return 1
    print(
        kms_output.render(
            body, getattr(args, "query", None), getattr(args, "output", None)
        )
    )
    return 0


def print_kms_error(err: KmsError) -> None:
    """Code, Message and RequestId of a failed call, on stderr."""
    request_id = err.request_id or "(none: KMS never answered)"
    print(
        f"Code: {err.code or 'unknown'}\nMessage: {err}\nRequestId: {request_id}",
        file=sys.stderr,
    )
