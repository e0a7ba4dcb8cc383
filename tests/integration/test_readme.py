"""The README's library example runs as written: 100 published, 100 consumed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from readme_kit import (
    EXPECTED_OUTPUT,
    example_environment,
    example_for,
    library_example,
)

pytestmark = pytest.mark.integration


def test_the_example_imports_from_the_facade_only() -> None:
    tree = ast.parse(library_example())
    modules = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert modules == {"envelope_mq"}


def test_the_library_example_publishes_and_consumes_100_messages(
    emq_rabbitmq_url: str, tmp_path: Path
) -> None:
    with example_environment(emq_rabbitmq_url) as (env, queue):
        script = tmp_path / "example.py"
        script.write_text(example_for(queue), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("RABBITMQ_", "KMS_", "ALIBABA_CLOUD_"))
                },
                **env,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == EXPECTED_OUTPUT
