"""The dispatcher loads only the chosen command, and names missing extras."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*argv: str, missing: tuple[str, ...] = ()) -> tuple[int, str, set[str]]:
    """Run the CLI in a fresh interpreter (``missing`` modules made unimportable);
    its exit code, stderr and the modules it had loaded."""
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in missing)
    code = (
        "import sys\n"
        f"{blocked}"
        "from envelope_mq.shared.cli import main\n"
        "try:\n"
        f"    code = main({list(argv)!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(' '.join(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = set(done.stdout.splitlines()[-1].split()) if done.stdout else set()
    return done.returncode, done.stderr, modules


def test_produce_help_imports_no_other_command() -> None:
    code, _, modules = run_cli("produce", "--help")
    assert code == 0
    assert "envelope_mq.producer.cli" in modules
    for other in (
        "envelope_mq.bench",
        "envelope_mq.kms_emulator",
        "envelope_mq.testing",
        "envelope_mq.demo",
        "envelope_mq.consumer",
        "envelope_mq.seal_cli",
        "envelope_mq.kms_cli",
        "yaml",
    ):
        assert not {m for m in modules if m == other or m.startswith(other + ".")}


def test_a_command_without_its_extra_names_the_extra_to_install() -> None:
    code, stderr, _ = run_cli("kms-emulator", "--help", missing=("yaml",))
    assert code == 1
    assert stderr.strip() == (
        "envelope-mq kms-emulator: needs 'yaml', which is not installed: "
        "pip install 'envelope-mq[emulator]'"
    )


def test_the_command_list_shows_a_command_whose_extra_is_missing() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['yaml'] = None\n"
            "from envelope_mq.shared.cli import main; main(['--help'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listing = " ".join(done.stdout.split())
    assert "kms-emulator unavailable: needs 'yaml'" in listing
    assert "produce encrypt and publish messages" in listing
