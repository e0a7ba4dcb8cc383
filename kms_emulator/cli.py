"""Placeholder registration; replaced by the emulator's real CLI (issue 3)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``kms-emulator`` subcommand."""
    subparsers.add_parser("kms-emulator", help="run the local Alibaba Cloud KMS")
