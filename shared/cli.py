"""The ``envelope-mq`` command.

Subcommands are discovered through the ``envelope_mq.commands`` entry-point group:
each package registers its own (``produce``, ``consume``, ``kms-emulator``...), so
this dispatcher imports none of them by name and ``shared/`` keeps pointing
inward only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

__all__ = ["build_parser", "main"]

ENTRY_POINT_GROUP = "envelope_mq.commands"

Register = Callable[["argparse._SubParsersAction[Any]"], None]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="envelope-mq",
        description=(
            "Encrypted messaging over RabbitMQ with Alibaba Cloud KMS envelope "
            "encryption."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        register: Register = ep.load()
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
