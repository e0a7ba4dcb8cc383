"""A message ledger: proof that nothing a test published went missing.

Every message a test publishes is recorded with a digest of its payload. As the
consumer handles messages (or quarantines them) the test reports that too. At
the end each published message_id must be *handled* with the right payload
(once or more; the extra deliveries are counted as duplicates) or *quarantined*
with a reason; anything else is *lost*. ``check()`` asserts that nothing is
lost, corrupted, unknown or in the wrong place, prints the counts on one line
and returns them as a dict, so documentation can quote a real run.

The ledger is thread-safe: handlers run on the consumer's thread while the test
publishes on its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["PREFIX", "Expect", "LedgerError", "MessageLedger", "digest", "parse_lines"]

Expect = Literal["handled", "quarantined", "either"]

PREFIX = "LEDGER"


class LedgerError(AssertionError):
    """The ledger does not balance: something was lost, corrupted or misplaced."""


def digest(payload: bytes) -> str:
    """The digest the ledger keeps instead of the payload (never the payload)."""
    return hashlib.sha256(payload).hexdigest()


@dataclass
class _Entry:
    digest: str
    expect: Expect
    handled: int = 0
    corrupted: int = 0
    quarantined: list[str] = field(default_factory=list)


class MessageLedger:
    """Published message_ids against what became of them."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self._entries: dict[str, _Entry] = {}
        self._unknown: Counter[str] = Counter()  # outcome kind -> count
        self._faults: Counter[str] = Counter()
        self._settled = 0  # ids handled or quarantined at least once
        self._lock = threading.Condition()
        self._started = time.monotonic()

    # -- recording -----------------------------------------------------------

    def published(
        self, message_id: str, payload: bytes, *, expect: Expect = "handled"
    ) -> None:
        """Record a message the test published (``expect``: where it should end)."""
        with self._lock:
            if message_id in self._entries:
                raise ValueError(f"message_id {message_id!r} published twice")
            self._entries[message_id] = _Entry(digest(payload), expect)

    def handled(self, message_id: str, payload: bytes) -> None:
        """Record that the handler received ``message_id`` with ``payload``."""
        with self._lock:
            entry = self._entries.get(message_id)
            if entry is None:
                self._unknown["handled"] += 1
                return
            if digest(payload) != entry.digest:
                entry.corrupted += 1
                return
            if entry.handled == 0 and not entry.quarantined:
                self._settled += 1
                self._lock.notify_all()
            entry.handled += 1

    def quarantined(self, message_id: str | None, reason: str) -> None:
        """Record a message found in the quarantine queue with ``reason``."""
        with self._lock:
            entry = self._entries.get(message_id) if message_id is not None else None
            if entry is None:
                self._unknown["quarantined"] += 1
                return
            if entry.handled == 0 and not entry.quarantined:
                self._settled += 1
                self._lock.notify_all()
            entry.quarantined.append(reason or "(no reason)")

    def fault(self, kind: str, count: int = 1) -> None:
        """Record ``count`` injected faults of ``kind`` (for the printed report)."""
        with self._lock:
            self._faults[kind] += count

    # -- waiting and checking --------------------------------------------------

    @property
    def settled(self) -> int:
        """How many published ids are handled or quarantined so far."""
        with self._lock:
            return self._settled

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def wait_settled(self, timeout: float, at_least: int | None = None) -> bool:
        """Block until ``at_least`` ids (default: all) are settled, or timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = len(self._entries) if at_least is None else at_least
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 1.0))
            return True

    def outstanding(self, limit: int = 10) -> list[str]:
        """Up to ``limit`` published ids with no outcome yet (for failure texts)."""
        with self._lock:
            return [
                mid
                for mid, e in self._entries.items()
                if not e.handled and not e.quarantined
            ][:limit]

    def report(self) -> dict[str, Any]:
        """The counts, as a JSON-friendly dict."""
        with self._lock:
            entries = list(self._entries.values())
            reasons: Counter[str] = Counter()
            handled = duplicates = corrupted = lost = misplaced = 0
            for entry in entries:
                corrupted += entry.corrupted
                if entry.handled:
                    handled += 1
                    duplicates += entry.handled - 1
                elif entry.quarantined:
                    reasons[entry.quarantined[0]] += 1
                else:
                    lost += 1
                misplaced += _misplaced(entry)
            return {
                "scenario": self.scenario,
                "published": len(entries),
                "handled": handled,
                "duplicates": duplicates,
                "quarantined": dict(sorted(reasons.items())),
                "lost": lost,
                "corrupted": corrupted,
                "misplaced": misplaced,
                "unknown": dict(self._unknown),
                "faults": dict(sorted(self._faults.items())),
                "seconds": round(time.monotonic() - self._started, 1),
            }

    def check(self) -> dict[str, Any]:
        """Print the report and assert it balances; return the report."""
        report = self.report()
        print(f"{PREFIX} {json.dumps(report, ensure_ascii=False)}", flush=True)
        problems = [
            f"{name}={report[name]}"
            for name in ("lost", "corrupted", "misplaced")
            if report[name]
        ]
        if report["unknown"]:
            problems.append(f"unknown={report['unknown']}")
        if problems:
            sample = self.outstanding()
            raise LedgerError(
                f"ledger of {self.scenario!r} does not balance: "
                f"{', '.join(problems)}; first outstanding ids: {sample}"
            )
        return report


def _misplaced(entry: _Entry) -> int:
    """1 when a message ended somewhere the test said it must not."""
    if entry.expect == "handled":
        return int(bool(entry.quarantined))
    if entry.expect == "quarantined":
        return int(bool(entry.handled))
    return 0


def parse_lines(lines: Iterable[str]) -> list[Mapping[str, Any]]:
    """The reports printed by ``check()`` found in ``lines`` (for docs and CI logs)."""
    reports = []
    for line in lines:
        head, _, rest = line.strip().partition(" ")
        if head == PREFIX and rest.startswith("{"):
            reports.append(json.loads(rest))
    return reports
