"""``envelope-mq kms``: every command against the emulator, errors included."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.shared.cli import main

from envelope_mq.kms_cli import COMMANDS

pytestmark = pytest.mark.integration

ADMIN = ("cli-admin", "cli-admin-secret")
READER = ("cli-reader", "cli-reader-secret")  # may only DescribeKey
ALIAS = "alias/cli-test"
KEY_ID = str(uuid.uuid4())


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    seed = {
        "principals": [
            {
                "access_key_id": ADMIN[0],
                "access_key_secret": ADMIN[1],
                "actions": ["*"],
                "keys": ["*"],
            },
            {
                "access_key_id": READER[0],
                "access_key_secret": READER[1],
                "actions": ["DescribeKey"],
                "keys": ["*"],
            },
        ],
        "keys": [{"key_id": KEY_ID, "description": "cli test key", "aliases": [ALIAS]}],
    }
    with Emulator(seed=seed, auth="strict", admin=False, port=0) as emu:
        yield emu


@pytest.fixture(autouse=True)
def environment(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ADMIN[0])
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ADMIN[1])
    monkeypatch.setenv("KMS_ENDPOINT", emulator.endpoint)
    monkeypatch.delenv("ALIBABA_CLOUD_REGION_ID", raising=False)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def body(self) -> dict[str, Any]:
        assert self.code == 0, self.err
        parsed: dict[str, Any] = json.loads(self.out)
        return parsed

    def error(self) -> dict[str, str]:
        """The Code/Message/RequestId lines of a failed call."""
        assert self.code == 1
        assert self.out == ""
        return dict(
            line.split(": ", 1) for line in self.err.splitlines() if ": " in line
        )


@pytest.fixture
def kms(capsys: pytest.CaptureFixture[str]) -> Any:
    def call(*args: str) -> Result:
        code = main(["kms", *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def new_key(kms: Any, *extra: str) -> str:
    key_id: str = kms("create-key", "--description", "made by a test", *extra).body[
        "KeyMetadata"
    ]["KeyId"]
    return key_id


def state(kms: Any, key_id: str) -> str:
    key_state: str = kms("describe-key", "--key-id", key_id).body["KeyMetadata"][
        "KeyState"
    ]
    return key_state


def test_create_key_returns_enabled_metadata(kms: Any) -> None:
    body = kms(
        "create-key",
        "--description",
        "rotating",
        "--enable-automatic-rotation",
        "true",
        "--rotation-interval",
        "30d",
    ).body
    meta = body["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    assert meta["Description"] == "rotating"
    assert meta["AutomaticRotation"] == "Enabled"
    assert meta["RotationInterval"] == "2592000s"
    assert body["RequestId"]


def test_describe_key_resolves_an_alias(kms: Any) -> None:
    meta = kms("describe-key", "--key-id", ALIAS).body["KeyMetadata"]
    assert meta["KeyId"] == KEY_ID
    assert meta["Description"] == "cli test key"


def test_list_keys_pages_and_filters(kms: Any) -> None:
    disabled = new_key(kms)
    kms("disable-key", "--key-id", disabled)
    page = kms("list-keys", "--page-size", "1", "--page-number", "1").body
    assert len(page["Keys"]["Key"]) == 1
    assert page["TotalCount"] >= 2
    filters = json.dumps([{"Key": "KeyState", "Values": ["Disabled"]}])
    listed = kms("list-keys", "--page-size", "100", "--filters", filters).body
    ids = {k["KeyId"] for k in listed["Keys"]["Key"]}
    assert disabled in ids
    assert KEY_ID not in ids


def test_encrypt_then_decrypt_under_a_context(kms: Any) -> None:
    context = '{"app":"lab","step":"2"}'
    sealed = kms(
        "encrypt",
        "--key-id",
        ALIAS,
        "--plaintext",
        "hello KMS",
        "--encryption-context",
        context,
    ).body
    assert sealed["KeyId"] == KEY_ID
    opened = kms(
        "decrypt",
        "--ciphertext-blob",
        sealed["CiphertextBlob"],
        "--encryption-context",
        '{"step":"2","app":"lab"}',  # matched by meaning, not by text
    ).body
    assert opened["Plaintext"] == "hello KMS"
    assert opened["KeyId"] == KEY_ID


def test_decrypt_with_another_context_prints_the_error(kms: Any) -> None:
    blob = kms(
        "encrypt",
        "--key-id",
        ALIAS,
        "--plaintext",
        "x",
        "--encryption-context",
        '{"a":"1"}',
    ).body["CiphertextBlob"]
    failed = kms(
        "decrypt", "--ciphertext-blob", blob, "--encryption-context", '{"a":"2"}'
    )
    error = failed.error()
    assert error["Code"] == "InvalidParameter"
    assert "CiphertextBlob" in error["Message"]
    assert uuid.UUID(error["RequestId"])


def test_generate_data_key_returns_a_key_that_decrypts_back(kms: Any) -> None:
    body = kms(
        "generate-data-key", "--key-id", ALIAS, "--encryption-context", '{"k":"v"}'
    ).body
    assert len(base64.b64decode(body["Plaintext"])) == 32
    opened = kms(
        "decrypt",
        "--ciphertext-blob",
        body["CiphertextBlob"],
        "--encryption-context",
        '{"k":"v"}',
    ).body
    assert opened["Plaintext"] == body["Plaintext"]


def test_generate_data_key_number_of_bytes_wins(kms: Any) -> None:
    body = kms(
        "generate-data-key",
        "--key-id",
        ALIAS,
        "--key-spec",
        "AES_256",
        "--number-of-bytes",
        "16",
    ).body
    assert len(base64.b64decode(body["Plaintext"])) == 16


def test_generate_data_key_without_plaintext_returns_only_the_blob(kms: Any) -> None:
    body = kms("generate-data-key-without-plaintext", "--key-id", ALIAS).body
    assert "Plaintext" not in body
    opened = kms("decrypt", "--ciphertext-blob", body["CiphertextBlob"]).body
    assert len(base64.b64decode(opened["Plaintext"])) == 32


def test_re_encrypt_moves_a_ciphertext_to_another_key(kms: Any) -> None:
    destination = new_key(kms)
    blob = kms(
        "encrypt",
        "--key-id",
        ALIAS,
        "--plaintext",
        "moving",
        "--encryption-context",
        '{"a":"1"}',
    ).body["CiphertextBlob"]
    moved = kms(
        "re-encrypt",
        "--ciphertext-blob",
        blob,
        "--destination-key-id",
        destination,
        "--source-encryption-context",
        '{"a":"1"}',
        "--destination-encryption-context",
        '{"b":"2"}',
    ).body
    assert moved["KeyId"] == destination
    opened = kms(
        "decrypt",
        "--ciphertext-blob",
        moved["CiphertextBlob"],
        "--encryption-context",
        '{"b":"2"}',
    ).body
    assert (opened["Plaintext"], opened["KeyId"]) == ("moving", destination)


def test_disabled_key_refuses_then_enabled_key_works(kms: Any) -> None:
    key_id = new_key(kms)
    assert kms("disable-key", "--key-id", key_id).code == 0
    assert state(kms, key_id) == "Disabled"
    error = kms("encrypt", "--key-id", key_id, "--plaintext", "x").error()
    assert error["Code"] == "Rejected.Disabled"
    assert error["RequestId"]
    assert kms("enable-key", "--key-id", key_id).code == 0
    assert kms("encrypt", "--key-id", key_id, "--plaintext", "x").code == 0


def test_schedule_then_cancel_key_deletion(kms: Any) -> None:
    key_id = new_key(kms)
    assert kms(
        "schedule-key-deletion", "--key-id", key_id, "--pending-window-in-days", "7"
    ).body["RequestId"]
    meta = kms("describe-key", "--key-id", key_id).body["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["DeleteDate"]
    error = kms("generate-data-key", "--key-id", key_id).error()
    assert error["Code"] == "Rejected.PendingDeletion"
    assert kms("cancel-key-deletion", "--key-id", key_id).body["RequestId"]
    assert state(kms, key_id) == "Enabled"


def test_create_alias_then_list_aliases(kms: Any) -> None:
    key_id = new_key(kms)
    alias = f"alias/cli-{uuid.uuid4().hex[:8]}"
    assert kms("create-alias", "--alias-name", alias, "--key-id", key_id).body[
        "RequestId"
    ]
    listed = kms("list-aliases", "--page-size", "100").body["Aliases"]["Alias"]
    assert (alias, key_id) in {(a["AliasName"], a["KeyId"]) for a in listed}
    assert kms("describe-key", "--key-id", alias).body["KeyMetadata"]["KeyId"] == key_id
    error = kms("create-alias", "--alias-name", alias, "--key-id", key_id).error()
    assert error["Code"] == "AliasAlreadyExists"


def test_create_key_version_becomes_primary_and_is_listed(kms: Any) -> None:
    key_id = new_key(kms)
    version = kms("create-key-version", "--key-id", key_id).body["KeyVersion"]
    assert version["KeyId"] == key_id
    versions = kms("list-key-versions", "--key-id", key_id).body
    assert versions["TotalCount"] == 2
    ids = [v["KeyVersionId"] for v in versions["KeyVersions"]["KeyVersion"]]
    assert version["KeyVersionId"] in ids
    meta = kms("describe-key", "--key-id", key_id).body["KeyMetadata"]
    assert meta["PrimaryKeyVersion"] == version["KeyVersionId"]


def test_update_rotation_policy_turns_rotation_on_and_off(kms: Any) -> None:
    key_id = new_key(kms)
    assert kms(
        "update-rotation-policy",
        "--key-id",
        key_id,
        "--enable-automatic-rotation",
        "true",
        "--rotation-interval",
        "7d",
    ).body["RequestId"]
    meta = kms("describe-key", "--key-id", key_id).body["KeyMetadata"]
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == (
        "Enabled",
        "604800s",
    )
    assert kms(
        "update-rotation-policy",
        "--key-id",
        key_id,
        "--enable-automatic-rotation",
        "false",
    ).body["RequestId"]
    assert kms("describe-key", "--key-id", key_id).body["KeyMetadata"][
        "AutomaticRotation"
    ] == ("Disabled")


def test_unknown_key_prints_code_message_and_request_id(kms: Any) -> None:
    error = kms("describe-key", "--key-id", str(uuid.uuid4())).error()
    assert error["Code"] == "Forbidden.KeyNotFound"
    assert "not found" in error["Message"]
    assert uuid.UUID(error["RequestId"])


def test_unknown_alias_prints_alias_not_found(kms: Any) -> None:
    error = kms("encrypt", "--key-id", "alias/nowhere", "--plaintext", "x").error()
    assert error["Code"] == "Forbidden.AliasNotFound"


def test_wrong_secret_is_refused_and_never_printed(
    kms: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong-secret-value")
    result = kms("describe-key", "--key-id", ALIAS)
    error = result.error()
    assert error["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeySecret")
    assert error["RequestId"]
    assert "wrong-secret-value" not in result.err


def test_unknown_access_key_id_is_refused(kms: Any) -> None:
    error = kms(
        "describe-key",
        "--key-id",
        ALIAS,
        "--access-key-id",
        "nobody",
        "--access-key-secret",
        "whatever",
    ).error()
    assert error["Code"] == "InvalidAccessKeyId.NotFound"


def test_principal_without_permission_is_forbidden(kms: Any) -> None:
    reader = ["--access-key-id", READER[0], "--access-key-secret", READER[1]]
    assert kms("describe-key", "--key-id", ALIAS, *reader).code == 0
    error = kms("encrypt", "--key-id", ALIAS, "--plaintext", "x", *reader).error()
    assert error["Code"] == "Forbidden.NoPermission"


def test_missing_credentials_is_a_clear_error(
    kms: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_ID")
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    result = kms("list-keys")
    assert result.code == 1
    assert "no KMS credentials" in result.err


def test_profile_in_aliyun_config_is_used(
    kms: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_ID")
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    (tmp_path / ".aliyun").mkdir()
    config = {
        "current": "lab",
        "profiles": [
            {
                "name": "lab",
                "mode": "AK",
                "access_key_id": READER[0],
                "access_key_secret": READER[1],
                "region_id": "cn-hangzhou",
            }
        ],
    }
    (tmp_path / ".aliyun" / "config.json").write_text(json.dumps(config))
    assert kms("describe-key", "--key-id", ALIAS).body["KeyMetadata"]["KeyId"] == KEY_ID
    # The reader profile may not encrypt: proof the profile's key was used.
    assert kms("encrypt", "--key-id", ALIAS, "--plaintext", "x").error()["Code"] == (
        "Forbidden.NoPermission"
    )


def test_unreachable_endpoint_is_a_local_error_without_request_id(kms: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    error = kms("list-keys", "--endpoint", f"127.0.0.1:{port}").error()
    assert error["Code"].startswith("SDK.")
    assert "none" in error["RequestId"]


def test_ca_file_flag_and_kms_ca_file_reach_a_tls_endpoint(
    kms: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Emulator(seed={"principals": [_principal(ADMIN)]}, tls=True) as tls:
        assert tls.ca_file is not None
        untrusted = kms("list-keys", "--endpoint", tls.url).error()
        with_flag = kms(
            "list-keys", "--endpoint", tls.url, "--ca-file", str(tls.ca_file)
        )
        monkeypatch.setenv("KMS_CA_FILE", str(tls.ca_file))
        with_env = kms("list-keys", "--endpoint", tls.url)
    assert untrusted["Code"] == "EMQ.TlsCertificateUntrusted"
    assert with_flag.body["Keys"] == with_env.body["Keys"]


def _principal(creds: tuple[str, str]) -> dict[str, Any]:
    return {
        "access_key_id": creds[0],
        "access_key_secret": creds[1],
        "actions": ["*"],
        "keys": ["*"],
    }


def test_options_may_also_come_before_the_command(kms: Any, emulator: Emulator) -> None:
    result = main(
        ["kms", "--endpoint", emulator.endpoint, "describe-key", "--key-id", ALIAS]
    )
    assert result == 0


def test_bad_json_option_is_a_usage_error(kms: Any) -> None:
    with pytest.raises(SystemExit) as info:
        kms(
            "encrypt",
            "--key-id",
            ALIAS,
            "--plaintext",
            "x",
            "--encryption-context",
            "{bad",
        )
    assert info.value.code == 2


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_command_has_help_saying_what_it_does(
    command: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["kms", command.name, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(command.help.split()) in out
    assert command.action in out


def test_installed_command_prints_json_and_exit_status(
    emulator: Emulator, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ADMIN[0],
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ADMIN[1],
        "KMS_ENDPOINT": emulator.endpoint,
    }
    ok = subprocess.run(
        [sys.executable, "-m", "envelope_mq", "kms", "describe-key", "--key-id", ALIAS],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["KeyMetadata"]["KeyId"] == KEY_ID
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared",
            "kms",
            "describe-key",
            "--key-id",
            "alias/none",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert failed.returncode == 1
    assert "Code: Forbidden.AliasNotFound" in failed.stderr
