"""``envelope-mq seal`` / ``unseal`` against the emulator: files, pipes, failures."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.shared.cli import main
from envelope_mq.shared.sealed_file import DEFAULT_SEGMENT_SIZE, read_header

pytestmark = pytest.mark.integration

ADMIN = ("seal-admin", "seal-admin-secret")
ALIAS = "alias/seal-test"
KEY_ID = str(uuid.uuid4())
SEG = DEFAULT_SEGMENT_SIZE


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    seed = {
        "principals": [
            {
                "access_key_id": ADMIN[0],
                "access_key_secret": ADMIN[1],
                "actions": ["*"],
                "keys": ["*"],
            }
        ],
        "keys": [{"key_id": KEY_ID, "aliases": [ALIAS]}],
    }
    with Emulator(seed=seed, auth="strict", admin=False, port=0) as emu:
        yield emu


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ADMIN[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ADMIN[1],
        "KMS_ENDPOINT": emulator.endpoint,
        "KMS_KEY_ID": ALIAS,
    }


@pytest.fixture
def work(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean directory, and the process environment set as ``env`` says."""
    monkeypatch.delenv("ALIBABA_CLOUD_REGION_ID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def cli(*args: str) -> int:
    return main(list(args))


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 7])
def test_seal_then_unseal_round_trips(work: Path, size: int) -> None:
    data = os.urandom(size)
    (work / "data.bin").write_bytes(data)
    assert cli("seal", str(work / "data.bin")) == 0
    sealed = work / "data.bin.emq"
    assert sealed.exists()
    (work / "data.bin").unlink()
    assert cli("unseal", str(sealed)) == 0
    assert (work / "data.bin").read_bytes() == data


def test_sealed_header_names_the_key_id_and_the_context(work: Path) -> None:
    (work / "a.txt").write_bytes(b"hello")
    context = '{"file":"a.txt"}'
    out = work / "a.sealed"
    assert (
        cli(
            "seal", str(work / "a.txt"), "-o", str(out), "--encryption-context", context
        )
        == 0
    )
    with out.open("rb") as src:
        header = read_header(src)
    assert header.key_id == KEY_ID  # resolved from the alias by GenerateDataKey
    assert header.context == {"file": "a.txt"}
    assert header.segment_size == SEG


def test_unseal_with_the_expected_context_succeeds_and_another_fails(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "a").write_bytes(b"secret")
    assert cli("seal", str(work / "a"), "--encryption-context", '{"k":"v"}') == 0
    out = work / "a.out"
    sealed = str(work / "a.emq")
    assert (
        cli("unseal", sealed, "-o", str(out), "--encryption-context", '{"k":"w"}') == 1
    )
    assert "cannot be decrypted" in capsys.readouterr().err
    assert not out.exists()
    assert (
        cli("unseal", sealed, "-o", str(out), "--encryption-context", '{"k":"v"}') == 0
    )
    assert out.read_bytes() == b"secret"


def test_damaged_file_leaves_no_output_and_no_temporary_file(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "big").write_bytes(os.urandom(3 * SEG))
    assert cli("seal", str(work / "big")) == 0
    sealed = work / "big.emq"
    damaged = bytearray(sealed.read_bytes())
    damaged[-1] ^= 1  # the last segment's tag: everything before it verifies
    (work / "damaged.emq").write_bytes(bytes(damaged))
    before = set(work.iterdir())
    assert cli("unseal", str(work / "damaged.emq")) == 1
    assert "damaged.emq cannot be decrypted" in capsys.readouterr().err
    assert set(work.iterdir()) == before


def test_truncated_file_leaves_no_output(work: Path) -> None:
    (work / "big").write_bytes(os.urandom(2 * SEG + 5))
    assert cli("seal", str(work / "big")) == 0
    data = (work / "big.emq").read_bytes()
    header_size = len(read_header(io.BytesIO(data)).encoded)
    (work / "cut.emq").write_bytes(data[: header_size + SEG + 16])
    assert cli("unseal", str(work / "cut.emq")) == 1
    assert not (work / "cut").exists()


def test_existing_output_is_kept_unless_forced(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "f").write_bytes(b"new")
    (work / "f.emq").write_bytes(b"precious")
    assert cli("seal", str(work / "f")) == 1
    assert "--force" in capsys.readouterr().err
    assert (work / "f.emq").read_bytes() == b"precious"
    assert cli("seal", str(work / "f"), "--force") == 0
    assert (work / "f.emq").read_bytes() != b"precious"


def test_unseal_needs_an_output_name_without_the_suffix(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "x").write_bytes(b"x")
    assert cli("seal", str(work / "x"), "-o", str(work / "x.bin")) == 0
    assert cli("unseal", str(work / "x.bin")) == 1
    assert "-o" in capsys.readouterr().err


def test_seal_without_a_key_id_is_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KMS_KEY_ID")
    (work / "x").write_bytes(b"x")
    assert cli("seal", str(work / "x")) == 1
    assert "--key-id" in capsys.readouterr().err
    assert not (work / "x.emq").exists()


def test_unknown_key_prints_the_kms_error(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "x").write_bytes(b"x")
    assert cli("seal", str(work / "x"), "--key-id", str(uuid.uuid4())) == 1
    err = capsys.readouterr().err
    assert "Code: Forbidden.KeyNotFound" in err
    assert "RequestId: " in err
    assert not (work / "x.emq").exists()


def test_unseal_under_a_disabled_key_prints_the_kms_error(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("kms", "create-key") == 0
    key_id = json.loads(capsys.readouterr().out)["KeyMetadata"]["KeyId"]
    (work / "x").write_bytes(b"x")
    assert cli("seal", str(work / "x"), "--key-id", key_id) == 0
    assert cli("kms", "disable-key", "--key-id", key_id) == 0
    capsys.readouterr()
    assert cli("unseal", str(work / "x.emq"), "-o", str(work / "y")) == 1
    assert "Code: Rejected.Disabled" in capsys.readouterr().err
    assert not (work / "y").exists()


def test_missing_input_file_is_a_clear_error(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("seal", str(work / "nope")) == 1
    err = capsys.readouterr().err
    assert "nope" in err
    assert "No such file" in err


def test_pipe_seal_stdin_to_unseal_stdout(env: dict[str, str], tmp_path: Path) -> None:
    data = os.urandom(5 * SEG + 3)
    command = [sys.executable, "-m", "envelope_mq"]
    sealed = subprocess.run(
        [*command, "seal", "-"], input=data, capture_output=True, env=env, check=True
    ).stdout
    assert read_header(io.BytesIO(sealed)).key_id == KEY_ID
    opened = subprocess.run(
        [*command, "unseal", "-"],
        input=sealed,
        capture_output=True,
        env=env,
        check=True,
    ).stdout
    assert opened == data


def test_unseal_to_stdout_of_a_cut_file_exits_non_zero(env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "envelope_mq"]
    sealed = subprocess.run(
        [*command, "seal", "-"],
        input=os.urandom(2 * SEG),
        capture_output=True,
        env=env,
        check=True,
    ).stdout
    cut = subprocess.run(
        [*command, "unseal", "-"],
        input=sealed[:-20],
        capture_output=True,
        env=env,
        check=False,
    )
    assert cut.returncode == 1
    assert b"cannot be decrypted" in cut.stderr


def test_unseal_refuses_a_file_not_under_an_expected_key(
    work: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    other = emulator.service.call("CreateKey", {}, None)["KeyMetadata"]["KeyId"]
    (work / "a").write_bytes(b"secret")
    assert cli("seal", str(work / "a")) == 0
    sealed, out = str(work / "a.emq"), work / "a.out"
    assert cli("unseal", sealed, "-o", str(out), "--expect-key", other) == 1
    assert "master key is not the expected one" in capsys.readouterr().err
    assert not out.exists()
    # by alias, resolved with DescribeKey; any of several will do
    assert (
        cli(
            "unseal",
            sealed,
            "-o",
            str(out),
            "--expect-key",
            other,
            "--expect-key",
            ALIAS,
        )
        == 0
    )
    assert out.read_bytes() == b"secret"
