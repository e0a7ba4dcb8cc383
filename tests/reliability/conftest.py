"""The reliability scenarios repeat their ledger figures in the terminal summary,
and reap the processes a crash scenario started."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from crash_kit import Processes
from scenario_kit import ledger_report_hooks

pytest_runtest_logreport, pytest_terminal_summary = ledger_report_hooks("reliability")


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Where a test starts its processes; a failed test must not leave any behind."""
    started = Processes()
    yield started
    started.reap()
