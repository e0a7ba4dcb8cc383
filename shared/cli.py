"""The ``envelope-mq`` command.

Subcommands are discovered through the ``envelope_mq.commands`` entry-point group:
each package registers its own (``produce``, ``consume``, ``kms-emulator``...), so
this dispatcher imports none of them by name and ``shared/`` keeps pointing
inward only.

Only the chosen subcommand's module is imported: ``envelope-mq produce`` loads
neither the benchmark nor the emulator. ``envelope-mq --help`` (or an unknown
command) loads them all, to list them. A command whose optional dependencies
are not installed says which extra to install instead of a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, requires
from typing import Any

__all__ = ["build_parser", "main"]

ENTRY_POINT_GROUP = "envelope_mq.commands"
DISTRIBUTION = "envelope-mq"

Register = Callable[["argparse._SubParsersAction[Any]"], None]


class MissingExtraError(Exception):
    """A command needs an optional dependency that is not installed."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser: the command named in ``argv``, or every command.

    Raises MissingExtraError when the named command cannot be loaded for want
    of an optional dependency.
    """
    parser = argparse.ArgumentParser(
        prog="envelope-mq",
        description=(
            "Encrypted messaging over RabbitMQ with Alibaba Cloud KMS envelope "
            "encryption."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    chosen = _chosen(argv, commands)
    if chosen is not None:
        _load(commands[chosen])(subparsers)
        return parser
    for name in sorted(commands):
        try:
            register = _load(commands[name])
        except MissingExtraError as exc:
            subparsers.add_parser(name, help=f"unavailable: {exc}")
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
        if run is None:
            parser.print_help(sys.stderr)
            return 2
        try:
            return run(args)
        except ModuleNotFoundError as exc:
            _raise_missing_extra(exc)
            raise
    except MissingExtraError as exc:
        prog = " ".join(["envelope-mq", *argv[:1]])
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _chosen(argv: Sequence[str] | None, commands: dict[str, Any] | None) -> str | None:
    """The subcommand ``argv`` names (the first word; the top level has only -h)."""
    if not argv or argv[0].startswith("-"):
        return None
    if commands is not None and argv[0] not in commands:
        return None  # unknown: let argparse list the real ones
    return argv[0]


def _load(ep: EntryPoint) -> Register:
    try:
        register: Register = ep.load()
    except ModuleNotFoundError as exc:
        _raise_missing_extra(exc)
        raise
    return register


def _raise_missing_extra(exc: ModuleNotFoundError) -> None:
    """Raise MissingExtraError naming the extra that brings the missing module,
    when one of ours does; otherwise return (a bug of ours keeps its traceback)."""
    module = (exc.name or "").split(".")[0]
    if not module or module == "envelope_mq":
        return
    extras = sorted(_extras_providing(module))
    if extras:
        install = " or ".join(f"pip install '{DISTRIBUTION}[{e}]'" for e in extras)
        raise MissingExtraError(
            f"needs {module!r}, which is not installed: {install}"
        ) from exc


def _extras_providing(module: str) -> set[str]:
    # Requirement names and module names differ (pyyaml/yaml,
    # aws-encryption-sdk/aws_encryption_sdk): compare them squashed, allowing
    # the usual "py" prefix (but not types-pyyaml's stubs).
    try:
        requirements = requires(DISTRIBUTION) or []
    except PackageNotFoundError:
        return set()
    wanted = _squash(module)
    found = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if name and extra and _squash(name.group(0)) in (wanted, "py" + wanted):
            found.add(extra.group(1))
    return found


def _squash(name: str) -> str:
    return re.sub(r"[-_.]+", "", name).lower()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
