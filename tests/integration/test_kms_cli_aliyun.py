"""``envelope-mq kms`` in the aliyun CLI's own syntax, against the real emulator."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.shared.cli import main

from envelope_mq.kms_cli import COMMANDS

pytestmark = pytest.mark.integration

ADMIN = ("aliyun-admin", "aliyun-admin-secret")
ALIAS = "alias/aliyun-syntax"
KEY_ID = str(uuid.uuid4())
BIN = Path(sys.executable).parent


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
        "keys": [{"key_id": KEY_ID, "description": "lab key", "aliases": [ALIAS]}],
    }
    with Emulator(seed=seed, auth="strict", admin=False, port=0) as emu:
        yield emu


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ADMIN[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ADMIN[1],
        "KMS_ENDPOINT": emulator.endpoint,
    }


@pytest.fixture
def kms(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["kms", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


SEED_LAB = r"""
set -e
envelope-mq kms ListKeys > keys.json
envelope-mq kms DescribeKey --KeyId "$KEY" > described.json
envelope-mq kms Encrypt --KeyId "$KEY" --Plaintext "hello, lab" > e.json
BLOB=$(python3 -c 'import json; print(json.load(open("e.json"))["CiphertextBlob"])')
envelope-mq kms Decrypt --CiphertextBlob "$BLOB" > decrypted.json
envelope-mq kms GenerateDataKey --KeyId "$KEY" > datakey.json
envelope-mq kms CreateKey > created.json
"""


def test_the_seed_labs_six_aliyun_commands_run_verbatim(
    env: dict[str, str], tmp_path: Path
) -> None:
    # The lab's commands with `aliyun` replaced by `envelope-mq`, run by a shell.
    done = subprocess.run(
        ["bash", "-c", SEED_LAB],
        cwd=tmp_path,
        env={**env, "KEY": ALIAS},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    def read(name: str) -> Any:
        return json.loads((tmp_path / name).read_text())

    assert KEY_ID in {k["KeyId"] for k in read("keys.json")["Keys"]["Key"]}
    assert read("described.json")["KeyMetadata"]["KeyId"] == KEY_ID
    assert read("decrypted.json")["Plaintext"] == "hello, lab"
    assert len(base64.b64decode(read("datakey.json")["Plaintext"])) == 32
    assert read("created.json")["KeyMetadata"]["KeyState"] == "Enabled"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.action for c in COMMANDS])
def test_every_command_answers_to_its_api_name_and_parameter_names(
    command: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["kms", command.action, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for param in command.params:
        assert f"--{param.name} " in out


def test_the_two_spellings_give_the_same_answer(kms: Any) -> None:
    code, out, _ = kms("DescribeKey", "--KeyId", ALIAS)
    assert code == 0
    code, kebab, _ = kms("describe-key", "--key-id", ALIAS)
    assert json.loads(out)["KeyMetadata"] == json.loads(kebab)["KeyMetadata"]


@pytest.mark.parametrize(
    "args",
    [
        ("DescribeKey", "--key-id", ALIAS),
        ("describe-key", "--KeyId", ALIAS),
        ("Encrypt", "--KeyId", ALIAS, "--plaintext", "x"),
        ("DescribeKey", "--Key", ALIAS),  # no abbreviations either
    ],
)
def test_a_command_never_mixes_the_two_spellings(kms: Any, args: tuple[str]) -> None:
    with pytest.raises(SystemExit) as info:
        kms(*args)
    assert info.value.code == 2


def test_query_selects_with_jmespath(kms: Any) -> None:
    code, out, _ = kms("ListKeys", "--PageSize", "100", "--query", "Keys.Key[].KeyId")
    assert code == 0
    assert KEY_ID in json.loads(out)
    code, out, _ = kms("DescribeKey", "--KeyId", ALIAS, "--cli-query", "KeyMetadata")
    assert json.loads(out)["KeyId"] == KEY_ID


def test_output_prints_a_table_of_the_rows_and_columns(kms: Any) -> None:
    code, out, _ = kms(
        "ListKeys",
        "--PageSize",
        "100",
        "--output",
        "cols=KeyId,KeyArn",
        "rows=Keys.Key[]",
    )
    assert code == 0
    header, rule, *rows = out.splitlines()
    assert header.split(" | ")[0].strip() == "KeyId"
    assert header.split(" | ")[1].strip() == "KeyArn"
    assert set(rule) <= {"-", " ", "|"}
    row = next(line for line in rows if line.startswith(KEY_ID))
    assert row.split(" | ")[1].strip().endswith(f"key/{KEY_ID}")


def test_output_without_rows_is_one_line_of_the_answer(kms: Any) -> None:
    code, out, _ = kms(
        "describe-key",
        "--key-id",
        ALIAS,
        "--output",
        "cols=KeyMetadata.KeyId",
        "num=true",
    )
    assert code == 0
    assert out.splitlines()[2].split(" | ") == ["0  ", KEY_ID]


@pytest.mark.parametrize(
    "words", [("rows=Keys.Key[]",), ("cols=A", "color=red"), ("cols=A", "rows=[")]
)
def test_a_bad_output_or_query_is_a_usage_error(kms: Any, words: tuple[str]) -> None:
    with pytest.raises(SystemExit) as info:
        kms("ListKeys", "--output", *words)
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        kms("ListKeys", "--query", "Keys.[")
    assert info.value.code == 2


def test_global_flags_are_spelled_as_the_aliyun_cli_spells_them(
    env: dict[str, str], emulator: Emulator, tmp_path: Path
) -> None:
    bare = {k: v for k, v in env.items() if not k.startswith(("ALIBABA", "KMS"))}
    done = subprocess.run(
        [
            str(BIN / "envelope-mq"),
            "kms",
            "DescribeKey",
            "--KeyId",
            ALIAS,
            "--region",
            "cn-hangzhou",
            "--endpoint",
            emulator.endpoint,
            "--access-key-id",
            ADMIN[0],
            "--access-key-secret",
            ADMIN[1],
        ],
        env=bare,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["KeyMetadata"]["KeyId"] == KEY_ID
