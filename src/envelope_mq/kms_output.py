"""How ``envelope-mq kms`` prints an answer: JSON, a JMESPath query, a table.

The aliyun CLI's two ways of cutting an answer down, spelled as it spells them:
``--query EXPR`` (JMESPath, applied first) and ``--output cols=A,B rows=PATH``
(a table with one line per element of PATH, one column per expression in
cols). Without them the answer is the service's JSON, pretty-printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

__all__ = ["Table", "add_arguments", "query", "render", "table"]


@dataclass(frozen=True)
class Table:
    """``--output cols=A,B rows=PATH [num=true]``, compiled."""

    cols: tuple[str, ...]
    columns: tuple[ParsedResult, ...]
    rows: ParsedResult | None
    numbered: bool = False


def query(text: str) -> ParsedResult:
    """argparse type of ``--query``: a compiled JMESPath expression."""
    try:
        return jmespath.compile(text)
    except JMESPathError as exc:
        raise argparse.ArgumentTypeError(
            f"not a JMESPath expression: {text!r} ({exc})"
        ) from None


def table(words: Sequence[str]) -> Table:
    """Compile the words after ``--output``; raise ArgumentTypeError if bad."""
    fields: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or name not in ("cols", "rows", "num") or name in fields:
            raise argparse.ArgumentTypeError(
                f"--output takes cols=A,B [rows=PATH] [num=true], not {word!r}"
            )
        fields[name] = value
    names = tuple(c.strip() for c in fields.get("cols", "").split(",") if c.strip())
    if not names:
        raise argparse.ArgumentTypeError("--output needs cols=A,B,...")
    rows = fields.get("rows")
    return Table(
        cols=names,
        columns=tuple(query(name) for name in names),
        rows=query(rows) if rows else None,
        numbered=fields.get("num", "false").lower() == "true",
    )


class _TableAction(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        words = [str(v) for v in values] if isinstance(values, list) else [str(values)]
        try:
            setattr(namespace, self.dest, table(words))
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))


def add_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Add ``--query`` and ``--output`` (``suppress`` as in credentials)."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("output, as the aliyun CLI has it")
    group.add_argument(
        "--query",
        "--cli-query",
        dest="query",
        type=query,
        default=default,
        metavar="JMESPATH",
        help="print only what this JMESPath expression selects, "
        "e.g. 'Keys.Key[].KeyId'",
    )
    group.add_argument(
        "--output",
        dest="output",
        nargs="+",
        action=_TableAction,
        default=default,
        metavar="cols=A,B rows=PATH",
        help="print a table: one line per element of rows (JMESPath), "
        "one column per name in cols; num=true numbers the lines",
    )


def render(body: object, selector: ParsedResult | None, shape: Table | None) -> str:
    """The text to print for ``body``."""
    if selector is not None:
        body = selector.search(body)
    if shape is None:
        return json.dumps(body, indent=2, ensure_ascii=False)
    found = shape.rows.search(body) if shape.rows is not None else body
    rows = found if isinstance(found, list) else [] if found is None else [found]
    header = list(shape.cols)
    lines = [[_cell(column.search(row)) for column in shape.columns] for row in rows]
    if shape.numbered:
        header.insert(0, "Num")
        lines = [[str(n), *line] for n, line in enumerate(lines)]
    widths = [
        max([len(c), *(len(line[i]) for line in lines)]) for i, c in enumerate(header)
    ]
    out = [header, ["-" * w for w in widths], *lines]
    return "\n".join(
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in out
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
