"""The benchmark's results: figures and targets, as a table and as JSON.

Every number in a :class:`Report` was measured by this run; nothing here
computes or types one in. Sections add their figures, the target checks add
their verdicts, and :meth:`Report.table` / :meth:`Report.to_json` render them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Figure", "Report", "Target"]

Comparison = Literal[">=", "<="]


@dataclass(frozen=True)
class Figure:
    """One measured value, with the per-round values it is the median of."""

    section: str
    name: str
    value: float
    unit: str
    rounds: tuple[float, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Target:
    """A target of ``--check``: ``measured`` must be ``op`` ``limit``."""

    name: str
    measured: float
    op: Comparison
    limit: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        """True when the measured value meets the target."""
        if self.op == ">=":
            return self.measured >= self.limit
        return self.measured <= self.limit


@dataclass
class Report:
    """Everything one ``envelope-mq bench`` run measured."""

    machine: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(
        self,
        section: str,
        name: str,
        value: float,
        unit: str,
        *,
        rounds: Sequence[float] = (),
        note: str = "",
    ) -> None:
        """Record one figure."""
        self.figures.append(
            Figure(section, name, float(value), unit, tuple(rounds), note)
        )

    def check(
        self, name: str, measured: float, op: Comparison, limit: float, unit: str = ""
    ) -> None:
        """Record one target and the value measured for it."""
        self.targets.append(Target(name, float(measured), op, float(limit), unit))

    @property
    def missed(self) -> list[Target]:
        """The targets this run did not meet."""
        return [t for t in self.targets if not t.passed]

    def to_json(self) -> str:
        """The whole report as indented JSON, targets with their verdicts."""
        document = {
            "machine": self.machine,
            "parameters": self.parameters,
            "figures": [asdict(f) for f in self.figures],
            "targets": [{**asdict(t), "passed": t.passed} for t in self.targets],
        }
        # NaN (not measured) is not JSON: it becomes null.
        return json.dumps(_nulls(document), indent=2, ensure_ascii=False)

    def table(self) -> str:
        """The results as a Markdown table per section, then the targets."""
        lines: list[str] = []
        if self.machine:
            lines.append("| machine | |")
            lines.append("|---|---|")
            lines += [f"| {k} | {v} |" for k, v in self.machine.items()]
            lines.append("")
        section = None
        for figure in self.figures:
            if figure.section != section:
                section = figure.section
                if lines and lines[-1] != "":
                    lines.append("")
                lines.append(f"| {section} | value | per round | note |")
                lines.append("|---|--:|---|---|")
            rounds = " ".join(_number(r) for r in figure.rounds)
            value = f"{_number(figure.value)} {figure.unit}".strip()
            lines.append(f"| {figure.name} | {value} | {rounds} | {figure.note} |")
        if self.targets:
            lines += ["", "| target | measured | limit | result |", "|---|--:|--:|---|"]
            for t in self.targets:
                measured = f"{_number(t.measured)} {t.unit}".strip()
                limit = f"{t.op} {_number(t.limit)} {t.unit}".strip()
                verdict = "pass" if t.passed else "**MISSED**"
                lines.append(f"| {t.name} | {measured} | {limit} | {verdict} |")
        return "\n".join(lines) + "\n"


def _nulls(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    return value


def _number(value: float) -> str:
    """Three significant figures at least, no exponent for everyday sizes."""
    if not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
