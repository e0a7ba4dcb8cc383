"""``envelope-mq demo`` (being built)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``demo`` subcommand."""
    subparsers.add_parser("demo", help="publish, consume and verify encrypted messages")
