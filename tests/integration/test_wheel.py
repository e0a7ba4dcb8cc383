"""The done-when test of issue 12: the wheel, installed as a user would.

The wheel is built from this checkout's files (tracked or new, not ignored), in
a copy, as a fresh clone would build it. It holds one top-level package,
``envelope_mq``. A fresh virtual environment gets the wheel (its dependencies
from the package index, through pip's cache) beside a user project that has
packages of its own named ``shared``, ``producer`` and ``consumer``; there the
README's library example publishes and consumes 100 messages against the real
broker and an emulator (run by this test process), and a ``pytest`` run loads
nothing of ours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from readme_kit import EXPECTED_OUTPUT, example_environment, example_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 900


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    project: Path

    def run(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run in the user project, with the venv's interpreter first on PATH."""
        return subprocess.run(
            list(argv),
            cwd=self.project,
            env={**clean_environment(self.python.parent), **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def clean_environment(bin_dir: Path) -> dict[str, str]:
    """Our environment minus anything that would leak this checkout into the venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RABBITMQ_", "KMS_"))
        and not k.startswith(("ALIBABA_CLOUD_", "PYTEST_"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def checkout_copy(destination: Path) -> Path:
    """The files a clone of this checkout would have (plus new, unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def pip(python: Path, *argv: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *argv],
        env=clean_environment(python.parent),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def user_project(root: Path) -> Path:
    """A project whose own packages share our folders' names."""
    files = {
        "shared/__init__.py": "",
        "shared/rabbitmq.py": 'OWNER = "user project"\n',
        "producer/__init__.py": 'OWNER = "user project"\n',
        "consumer/__init__.py": "",
        "consumer/worker.py": 'OWNER = "user project"\n',
        "test_project.py": (
            "import sys\n\n"
            "import consumer.worker\n"
            "import shared.rabbitmq\n\n\n"
            "def test_our_own_packages_and_no_plugin_of_envelope_mq(pytestconfig):\n"
            "    assert shared.rabbitmq.OWNER == consumer.worker.OWNER\n"
            "    plugins = pytestconfig.pluginmanager.list_name_plugin()\n"
            "    assert not [n for n, _ in plugins if 'envelope_mq' in str(n)]\n"
            "    assert not [m for m in sys.modules if m.startswith('envelope_mq')]\n"
        ),
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source = checkout_copy(work / "source")
    dist = work / "dist"
    # Built in isolation from the copy, as pip builds a clone; --no-deps: ours only.
    pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(dist), str(source))
    [wheel] = dist.glob("envelope_mq-*.whl")
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=PIP_TIMEOUT
    )
    python = venv / "bin" / "python"
    # The base wheel (no extra), then pytest as the user's own test tool.
    pip(python, "install", "--find-links", str(dist), str(wheel), "pytest")
    return Installed(wheel, python, user_project(work / "project"))


def test_the_wheel_holds_exactly_the_envelope_mq_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    top = {name.split("/", 1)[0] for name in names}
    [dist_info] = [t for t in top if t.endswith(".dist-info")]
    assert top == {"envelope_mq", dist_info}
    assert "envelope_mq/py.typed" in names
    assert not [n for n in names if "passthrough" in n]  # the bench's non-sealer
    assert "pytest11" not in entry_points  # the plugin is opt-in


def test_the_readme_example_runs_beside_a_users_own_shared_producer_consumer(
    installed: Installed, emq_rabbitmq_url: str
) -> None:
    where = installed.run(
        str(installed.python),
        "-c",
        "import envelope_mq, shared.rabbitmq, producer, consumer.worker; "
        "print(envelope_mq.__file__); print(shared.rabbitmq.__file__)",
    )
    assert where.returncode == 0, where.stderr
    ours, theirs = where.stdout.split()
    assert "site-packages" in ours
    assert not ours.startswith(str(ROOT))
    assert theirs.startswith(str(installed.project))
    with example_environment(emq_rabbitmq_url) as (env, queue):
        script = installed.project / "example.py"
        script.write_text(example_for(queue), encoding="utf-8")
        done = installed.run(str(installed.python), str(script), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == EXPECTED_OUTPUT


def test_pytest_in_that_project_loads_no_plugin_of_ours(installed: Installed) -> None:
    done = installed.run(
        str(installed.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_in_the_base_install_a_command_names_its_missing_extra(
    installed: Installed,
) -> None:
    produce = installed.run(
        str(installed.python.parent / "envelope-mq"), "produce", "--help"
    )
    assert produce.returncode == 0, produce.stderr
    has_yaml = installed.run(str(installed.python), "-c", "import yaml")
    if has_yaml.returncode == 0:
        pytest.skip("a dependency brought PyYAML into the base install")
    emulator = installed.run(
        str(installed.python.parent / "envelope-mq"), "kms-emulator"
    )
    assert emulator.returncode == 1
    assert "pip install 'envelope-mq[emulator]'" in emulator.stderr
