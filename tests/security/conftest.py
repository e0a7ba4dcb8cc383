"""The security scenarios repeat their ledger figures in the terminal summary."""

from __future__ import annotations

from scenario_kit import ledger_report_hooks

pytest_runtest_logreport, pytest_terminal_summary = ledger_report_hooks("security")
