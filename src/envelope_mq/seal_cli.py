"""``envelope-mq seal`` and ``envelope-mq unseal``: envelope-encrypt files.

``seal FILE`` asks KMS for one data key (GenerateDataKey) and streams FILE
into the sealed-file format of docs/file-format.md; ``unseal`` has KMS unwrap
the key (Decrypt) and streams the plaintext back. ``-`` means standard input
or output. A file written with ``-o`` appears only once it is complete and
verified: it is written to a temporary file next to it, then renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from io import BufferedReader, BufferedWriter
from pathlib import Path
from typing import Any

from envelope_mq import credentials
from envelope_mq.kms_cli import json_context, print_kms_error
from envelope_mq.shared.errors import (
    DecryptionError,
    KeyMismatchError,
    KmsError,
    MessagingError,
)
from envelope_mq.shared.kms import KmsClient
from envelope_mq.shared.sealed_file import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    seal_stream,
    unseal_stream,
)

__all__ = ["SUFFIX", "register_seal", "register_unseal", "run_seal", "run_unseal"]

SUFFIX = ".emq"
STDIO = "-"
_UNREADABLE = (
    "cannot be decrypted: it is damaged, truncated or not a sealed file, "
    "or its context or master key is not the expected one"
)


def register_seal(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``envelope-mq seal``."""
    parser = subparsers.add_parser(
        "seal",
        help="envelope-encrypt a file with a KMS data key",
        description="Encrypt FILE with a fresh KMS data key, in authenticated "
        f"segments (docs/file-format.md). Writes FILE{SUFFIX} unless -o says "
        "otherwise; FILE - reads standard input and writes standard output.",
    )
    _common(parser)
    parser.add_argument(
        "--key-id",
        help="master key (key id, alias/NAME or ARN); default: $KMS_KEY_ID",
    )
    parser.add_argument(
        "--segment-size",
        type=int,
        default=DEFAULT_SEGMENT_SIZE,
        help=f"plaintext bytes per segment, {MIN_SEGMENT_SIZE}-{MAX_SEGMENT_SIZE} "
        f"(default {DEFAULT_SEGMENT_SIZE})",
    )
    parser.set_defaults(run=run_seal)


def register_unseal(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``envelope-mq unseal``."""
    parser = subparsers.add_parser(
        "unseal",
        help="decrypt a file made by seal",
        description=f"Decrypt a sealed FILE. Writes FILE without its {SUFFIX} "
        "suffix unless -o says otherwise; FILE - reads standard input and writes "
        "standard output. Written to standard output, plaintext is released "
        "segment by segment: check the exit status.",
    )
    _common(parser)
    parser.add_argument(
        "--expect-key",
        action="append",
        metavar="KEY",
        help="refuse the file unless KMS unwraps it with master key KEY (key id, "
        "alias/NAME or ARN, resolved by DescribeKey before anything is read); "
        "repeat to accept any of several",
    )
    parser.set_defaults(run=run_unseal)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="input file, or - for stdin")
    parser.add_argument("-o", "--output", metavar="OUT", help="output file, or -")
    parser.add_argument(
        "--encryption-context",
        type=json_context,
        help='JSON object of strings, e.g. {"file":"report"}; seal binds it, '
        "unseal requires exactly it",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    credentials.add_arguments(parser)


def run_seal(args: argparse.Namespace) -> int:
    """Seal one file; the exit code."""
    key_id = args.key_id or os.environ.get("KMS_KEY_ID")
    if not key_id:
        return _fail("seal", "name the master key with --key-id or KMS_KEY_ID")
    output = _output(args.file, args.output, lambda name: name + SUFFIX) or STDIO

    def work(src: BufferedReader, dst: BufferedWriter) -> None:
        seal_stream(
            src,
            dst,
            _kms(args),
            key_id,
            args.encryption_context,
            segment_size=args.segment_size,
        )

    if output == STDIO and sys.stdout.isatty():
        return _fail("seal", "refusing to write a sealed file to a terminal; use -o")
    return _run("seal", args, output, work)


def run_unseal(args: argparse.Namespace) -> int:
    """Unseal one file; the exit code."""
    output = _output(args.file, args.output, _strip_suffix)
    if output is None:
        return _fail(
            "unseal", f"{args.file} does not end in {SUFFIX}: name the output with -o"
        )

    def work(src: BufferedReader, dst: BufferedWriter) -> None:
        kms = _kms(args)
        # The file's header names a key, but only KMS's answer proves it:
        # unseal_stream holds the header against it, and against these.
        expected = (
            None
            if args.expect_key is None
            else {kms.describe_key_id(key) for key in args.expect_key}
        )
        unseal_stream(
            src,
            dst,
            kms,
            expected_context=args.encryption_context,
            expected_key_ids=expected,
        )

    return _run("unseal", args, output, work)


def _run(
    command: str,
    args: argparse.Namespace,
    output: str,
    work: Callable[[BufferedReader, BufferedWriter], None],
) -> int:
    if output != STDIO and not args.force and os.path.lexists(output):
        return _fail(command, f"{output} exists; use --force to overwrite it")
    try:
        with _input(args.file) as src, _atomic_output(output) as dst:
            work(src, dst)
    except KeyMismatchError as err:
        return _fail(
            command,
            f"{args.file} names master key {err.claimed}, but KMS unwrapped it "
            f"with {err.verified}: refused",
        )
    except DecryptionError:
        return _fail(command, f"{args.file} {_UNREADABLE}")
    except KmsError as err:
        print_kms_error(err)
        return 1
    except MessagingError as err:
        return _fail(command, str(err))
    except BrokenPipeError:
        return 1
    except OSError as err:
        return _fail(command, f"{err.filename or args.file}: {err.strerror or err}")
    return 0


def _kms(args: argparse.Namespace) -> KmsClient:
    return credentials.connect_data_plane(args, os.environ)


def _output(
    file: str, output: str | None, default: Callable[[str], str | None]
) -> str | None:
    if output:
        return output
    if file == STDIO:
        return STDIO
    return default(file)


def _strip_suffix(name: str) -> str | None:
    return (
        name[: -len(SUFFIX)]
        if name.endswith(SUFFIX) and len(name) > len(SUFFIX)
        else None
    )


@contextlib.contextmanager
def _input(file: str) -> Iterator[BufferedReader]:
    if file == STDIO:
        with open(sys.stdin.fileno(), "rb", closefd=False) as src:
            yield src
    else:
        with open(file, "rb") as src:
            yield src


@contextlib.contextmanager
def _atomic_output(output: str) -> Iterator[BufferedWriter]:
    """Standard output as is; a file only once everything was written."""
    if output == STDIO:
        sys.stdout.flush()
        with open(sys.stdout.fileno(), "wb", closefd=False) as dst:
            yield dst
        return
    target = Path(output)
    fd, temp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with open(fd, "wb") as dst:
            yield dst
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _fail(command: str, message: str) -> int:
    print(f"envelope-mq {command}: {message}", file=sys.stderr)
    return 1
