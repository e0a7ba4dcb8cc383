"""The Python examples of docs/*.md, run as scripts (tests/ is on sys.path).

A block marked ``<!-- example: producer -->`` or ``consumer`` runs with that
principal's settings in the environment and ``EMQ_QUEUE`` naming the test's
queue; an unmarked block needs neither.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

from command_kit import TIMEOUT, env_for
from envelope_mq.shared.config import Settings

__all__ = ["DOCS", "example_env", "examples", "run_example", "script"]

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!-- example: (producer|consumer) -->")


def examples(name: str) -> list[tuple[str | None, str]]:
    """(role or None, code) of every python block of docs/``name``, in order."""
    text = (DOCS / name).read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        mark = _MARK.fullmatch(before[-1].strip()) if before else None
        found.append((mark.group(1) if mark else None, match.group(1)))
    return found


def example_env(settings: Settings | None, queue: str) -> dict[str, str] | None:
    """The environment of a marked block (None: an unmarked block's, inherited)."""
    if settings is None:
        return None
    return {**env_for(settings), "EMQ_QUEUE": queue}


def script(tmp_path: Path, code: str) -> str:
    """``code`` written to a fresh file under ``tmp_path``; its path."""
    path = tmp_path / f"example-{uuid.uuid4().hex[:6]}.py"
    path.write_text(code, encoding="utf-8")
    return str(path)


def run_example(tmp_path: Path, code: str, env: dict[str, str] | None) -> str:
    """Run ``code`` as a script, which must succeed; its stdout."""
    done = subprocess.run(
        [sys.executable, script(tmp_path, code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
