"""``envelope-mq kms shred`` and ``unshred``: crypto-shredding by master key.

With one master key per tenant (or per subject), every message ever sealed
for it (in queues, streams, quarantine queues, backups) opens only while KMS
will Decrypt its data key. ``shred`` disables the key (every Decrypt under it
fails at once: ``Rejected.Disabled``) and then schedules its deletion after a
pending window (``Rejected.PendingDeletion``; gone for good when the window
ends). ``unshred`` undoes it within the window: CancelKeyDeletion, then
EnableKey. What it does and does not guarantee: docs/streams.md.

Each step is one KMS API call through :class:`shared.kms.AliyunKms`; the
plan is printed first, and nothing is done without ``--yes`` or the key id
typed back at a terminal. ``--dry-run`` prints the plan only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from envelope_mq import credentials, kms_output
from envelope_mq.shared.errors import KmsError, MessagingError
from envelope_mq.shared.kms import AliyunKms

__all__ = ["DEFAULT_PENDING_DAYS", "register_commands"]

DEFAULT_PENDING_DAYS = 7  # the shortest window KMS accepts
_MAX_PENDING_DAYS = 366


def _window(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not DEFAULT_PENDING_DAYS <= days <= _MAX_PENDING_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be {DEFAULT_PENDING_DAYS}-{_MAX_PENDING_DAYS} days, got {days}"
        )
    return days


def register_commands(
    commands: argparse._SubParsersAction[Any],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``shred`` and ``unshred`` to ``envelope-mq kms``'s subcommands."""
    shred = commands.add_parser(
        "shred",
        help="crypto-shred: disable a master key, then schedule its deletion",
        description="Make every message sealed under a master key unreadable: "
        "DisableKey now, then ScheduleKeyDeletion after a pending window. "
        "'envelope-mq kms unshred' undoes it until the window ends. See "
        "docs/streams.md for what this does and does not guarantee.",
        allow_abbrev=False,
    )
    _add_key_options(shred)
    shred.add_argument(
        "--pending-window-in-days",
        type=_window,
        default=DEFAULT_PENDING_DAYS,
        metavar="DAYS",
        help="days before KMS deletes the key for good, 7-366 (default: "
        "%(default)s); until then 'unshred' brings every message back",
    )
    add_common(shred)
    shred.set_defaults(run=run_shred)
    unshred = commands.add_parser(
        "unshred",
        help="undo shred within the pending window: cancel the deletion, enable",
        description="CancelKeyDeletion (when the key is pending deletion), then "
        "EnableKey: messages sealed under the key open again.",
        allow_abbrev=False,
    )
    _add_key_options(unshred)
    add_common(unshred)
    unshred.set_defaults(run=run_unshred)


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-id", required=True, help="key id, alias/NAME or key ARN")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, call nothing"
    )
    parser.add_argument(
        "--yes", action="store_true", help="do it without asking at the terminal"
    )


def _describe(kms: AliyunKms, key: str) -> dict[str, Any]:
    meta: dict[str, Any] = kms.call("DescribeKey", {"KeyId": key}, idempotent=True)[
        "KeyMetadata"
    ]
    return meta


def _confirmed(args: argparse.Namespace, key_id: str, verb: str) -> bool:
    """``--yes``, or the key id typed back at a terminal."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(
            f"envelope-mq kms {verb}: not done: pass --yes (no terminal to ask)",
            file=sys.stderr,
        )
        return False
    print(f"Type the key id ({key_id}) to go ahead: ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer != key_id:
        print(f"envelope-mq kms {verb}: not done", file=sys.stderr)
        return False
    return True


def _finish(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    body = {
        "KeyId": meta.get("KeyId"),
        "KeyState": meta.get("KeyState"),
        "DeleteDate": meta.get("DeleteDate") or "",
    }
    print(
        kms_output.render(
            body, getattr(args, "query", None), getattr(args, "output", None)
        )
    )


def run_shred(args: argparse.Namespace) -> int:
    """Disable the key, then schedule its deletion; the exit code."""
    return _run(args, "shred", _shred)


def run_unshred(args: argparse.Namespace) -> int:
    """Cancel the key's deletion, then enable it; the exit code."""
    return _run(args, "unshred", _unshred)


def _run(
    args: argparse.Namespace,
    verb: str,
    steps: Callable[[argparse.Namespace, AliyunKms, dict[str, Any]], int],
) -> int:
    from envelope_mq.kms_cli import print_kms_error

    kms: AliyunKms | None = None
    try:
        kms = credentials.connect(args, os.environ)
        return steps(args, kms, _describe(kms, args.key_id))
    except KmsError as err:
        print_kms_error(err)
        return 1
    except MessagingError as err:
        print(f"envelope-mq kms {verb}: {err}", file=sys.stderr)
        return 1
    finally:
        if kms is not None:
            kms.close()


def _shred(args: argparse.Namespace, kms: AliyunKms, meta: dict[str, Any]) -> int:
    key_id, state = meta["KeyId"], meta["KeyState"]
    if state == "PendingDeletion":
        print(
            f"envelope-mq kms shred: {key_id} is already pending deletion "
            f"(deleted on {meta.get('DeleteDate') or 'its DeleteDate'})",
            file=sys.stderr,
        )
        _finish(args, meta)
        return 0
    days = args.pending_window_in_days
    steps = [] if state == "Disabled" else ["DisableKey"]
    steps.append(f"ScheduleKeyDeletion (PendingWindowInDays={days})")
    print(
        f"envelope-mq kms shred: master key {key_id} ({state}"
        f"{', ' + repr(meta['Description']) if meta.get('Description') else ''}): "
        f"{' then '.join(steps)}.\n"
        "Every message sealed under it becomes unreadable now, everywhere it is "
        f"stored, and for good in {days} days; until then "
        f"'envelope-mq kms unshred --key-id {key_id}' brings them back.",
        file=sys.stderr,
    )
    if args.dry_run:
        print("envelope-mq kms shred: dry run, nothing done", file=sys.stderr)
        return 0
    if not _confirmed(args, key_id, "shred"):
        return 1
    if state != "Disabled":
        kms.call("DisableKey", {"KeyId": key_id}, idempotent=True)
    kms.call(
        "ScheduleKeyDeletion",
        {"KeyId": key_id, "PendingWindowInDays": days},
    )
    _finish(args, _describe(kms, key_id))
    return 0


def _unshred(args: argparse.Namespace, kms: AliyunKms, meta: dict[str, Any]) -> int:
    key_id, state = meta["KeyId"], meta["KeyState"]
    steps = []
    if state == "PendingDeletion":
        steps.append("CancelKeyDeletion")
    if state in ("PendingDeletion", "Disabled"):
        steps.append("EnableKey")
    if not steps:
        print(
            f"envelope-mq kms unshred: {key_id} is {state}: nothing to undo",
            file=sys.stderr,
        )
        _finish(args, meta)
        return 0 if state == "Enabled" else 1
    print(
        f"envelope-mq kms unshred: master key {key_id} ({state}): "
        f"{' then '.join(steps)}; messages sealed under it open again.",
        file=sys.stderr,
    )
    if args.dry_run:
        print("envelope-mq kms unshred: dry run, nothing done", file=sys.stderr)
        return 0
    if not _confirmed(args, key_id, "unshred"):
        return 1
    if "CancelKeyDeletion" in steps:
        # KMS returns a cancelled key to Enabled; EnableKey makes sure of it.
        kms.call("CancelKeyDeletion", {"KeyId": key_id})
    kms.call("EnableKey", {"KeyId": key_id}, idempotent=True)
    _finish(args, _describe(kms, key_id))
    return 0
