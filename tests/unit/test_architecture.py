"""The import rules of docs/architecture.md, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "envelope_mq"
# package -> where its source lives (the user's layout, mapped into one namespace)
SOURCES = {
    "shared": ROOT / "shared",
    "producer": ROOT / "producer",
    "consumer": ROOT / "consumer",
    "kms_emulator": ROOT / "kms_emulator",
    "envelope_mq": ROOT / "src" / "envelope_mq",
}

# package -> the packages of ours it may import (itself is always allowed)
ALLOWED = {
    "shared": set(),
    "producer": {"shared"},
    "consumer": {"shared"},
    "kms_emulator": set(),
    "envelope_mq": {"shared", "producer", "consumer", "kms_emulator"},
}


def _package_of(module: str) -> str | None:
    """``envelope_mq.shared.kms`` -> ``shared``; the root's own modules -> root."""
    parts = module.split(".")
    if parts[0] != NAMESPACE:
        return parts[0] if parts[0] in SOURCES else None  # an old top-level name
    if len(parts) > 1 and parts[1] in SOURCES and parts[1] != NAMESPACE:
        return parts[1]
    return NAMESPACE


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def _imported_packages(path: Path) -> set[str]:
    return {p for m in _imported_modules(path) if (p := _package_of(m))}


def _sources(package: str) -> list[Path]:
    root = SOURCES[package]
    return [
        path
        for path in root.rglob("*.py")
        # the root package's folder holds only its own modules
        if package != NAMESPACE or path.is_relative_to(root)
    ]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in _sources(package)
        if (bad := _imported_packages(path) - ALLOWED[package] - {package})
    }
    assert not offenders, "\n".join(sorted(offenders))


def test_every_package_of_ours_is_checked() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk | {NAMESPACE} == set(ALLOWED) == set(SOURCES)


def test_no_module_imports_an_old_top_level_name() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for package in SOURCES
        for path in _sources(package)
        for module in _imported_modules(path)
        if module.split(".")[0] in SOURCES.keys() - {NAMESPACE}
    }
    assert not offenders, "\n".join(sorted(offenders))


def test_no_folder_at_the_root_shadows_the_namespace() -> None:
    assert not (ROOT / NAMESPACE).exists()
