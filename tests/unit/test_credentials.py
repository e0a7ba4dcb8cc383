"""The command line's credentials: its flags first, then the library's chain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError, KmsCallerError, KmsUnavailableError
from envelope_mq.shared.kms.credentials import AccessKey

from envelope_mq import credentials
from envelope_mq.credentials import connect, credentials_from_args


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def env(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true", **extra}


ENV_KEY = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "env-id",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret",
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    credentials.add_arguments(parser)
    return parser.parse_args(list(argv))


def key(args: argparse.Namespace, environ: dict[str, str]) -> AccessKey:
    return credentials_from_args(args, Settings.from_env(environ)).current()


def profile(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "AK",
        "access_key_id": f"{name}-id",
        "access_key_secret": f"{name}-secret",
        "region_id": f"{name}-region",
        **fields,
    }


def write_config(
    home: Path, *profiles: dict[str, Any], current: str = "default"
) -> None:
    (home / ".aliyun").mkdir()
    config = {"current": current, "profiles": list(profiles), "meta_path": ""}
    (home / ".aliyun" / "config.json").write_text(json.dumps(config))


def test_flags_win_over_environment_and_profile(home: Path) -> None:
    write_config(home, profile("default"))
    args = parse("--access-key-id", "flag-id", "--access-key-secret", "flag-secret")
    got = key(args, env(home, **ENV_KEY))
    assert (got.access_key_id, got.access_key_secret) == ("flag-id", "flag-secret")
    assert got.security_token is None


def test_an_sts_token_flag_makes_it_mode_sts_token(home: Path) -> None:
    args = parse(
        "--access-key-id", "STS.x", "--access-key-secret", "s", "--sts-token", "t"
    )
    assert key(args, env(home)).security_token == "t"


def test_environment_wins_over_the_current_profile(home: Path) -> None:
    write_config(home, profile("default"))
    assert key(parse(), env(home, **ENV_KEY)).access_key_id == "env-id"


def test_the_environments_security_token_comes_along(home: Path) -> None:
    got = key(parse(), env(home, **ENV_KEY, ALIBABA_CLOUD_SECURITY_TOKEN="tok"))
    assert got.security_token == "tok"


def test_current_profile_is_used_without_flags_or_environment(home: Path) -> None:
    write_config(home, profile("default"), profile("other"), current="other")
    assert key(parse(), env(home)).access_key_id == "other-id"


def test_named_profile_flag_wins_over_environment(home: Path) -> None:
    write_config(home, profile("default"), profile("lab"))
    assert key(parse("--profile", "lab"), env(home, **ENV_KEY)).access_key_id == (
        "lab-id"
    )


@pytest.mark.parametrize(
    ("fields", "token"),
    [
        ({"mode": "StsToken", "sts_token": "profile-token"}, "profile-token"),
        ({"mode": "AK"}, None),
    ],
)
def test_profiles_in_other_modes_than_ak_work_too(
    home: Path, fields: dict[str, str], token: str | None
) -> None:
    write_config(home, profile("default", **fields))
    assert key(parse(), env(home)).security_token == token


def test_missing_everything_is_the_callers_fault_with_every_place_tried(
    home: Path,
) -> None:
    with pytest.raises(KmsCallerError) as info:
        key(parse(), env(home))
    text = str(info.value)
    assert "no KMS credentials" in text
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in text
    assert "config.json" in text


def test_half_an_access_key_is_an_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="--access-key-secret"):
        key(parse("--access-key-id", "only-id"), env(home))


@pytest.mark.parametrize(
    ("mode", "needs"),
    [
        ("OIDC", "--ram-role-arn"),
        ("RamRoleArn", "--access-key-id"),
        ("CredentialsURI", "--credentials-uri"),
        ("StsToken", "--sts-token"),
    ],
)
def test_a_mode_without_its_flags_names_what_is_missing(
    home: Path, mode: str, needs: str
) -> None:
    with pytest.raises(ConfigError, match=needs):
        key(parse("--mode", mode), env(home))


def test_unknown_named_profile_is_an_unavailable_source(home: Path) -> None:
    write_config(home, profile("default"))
    with pytest.raises(KmsUnavailableError, match="nowhere"):
        key(parse("--profile", "nowhere"), env(home))


def test_malformed_config_file_error_does_not_echo_its_content(home: Path) -> None:
    (home / ".aliyun").mkdir()
    (home / ".aliyun" / "config.json").write_text('{"access_key_secret": "leak-me"')
    with pytest.raises(KmsUnavailableError) as info:
        key(parse("--profile", "default"), env(home))
    assert "leak-me" not in str(info.value)


def test_region_comes_from_flag_then_environment_then_profile_then_default(
    home: Path,
) -> None:
    def region(args: argparse.Namespace, environ: dict[str, str]) -> str:
        return repr(connect(args, environ))

    region_env = {"ALIBABA_CLOUD_REGION_ID": "env-region", **ENV_KEY}
    assert "flag-region" in region(parse("--region", "flag-region"), env(home))
    assert "env-region" in region(parse(), env(home, **region_env))
    assert "cn-hangzhou" in region(parse(), env(home, **ENV_KEY))
    write_config(home, profile("default"))
    assert "default-region" in region(parse(), env(home))


def test_endpoint_comes_from_flag_then_kms_endpoint(home: Path) -> None:
    environ = env(home, KMS_ENDPOINT="127.0.0.1:1", **ENV_KEY)
    assert "127.0.0.1:1" in repr(connect(parse(), environ))
    assert "127.0.0.1:2" in repr(connect(parse("--endpoint", "127.0.0.1:2"), environ))


def test_a_malformed_endpoint_is_refused_naming_where_it_came_from(
    home: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"^--endpoint must be host:port"):
        connect(parse("--endpoint", "htps://kms.example"), env(home, **ENV_KEY))
    environ = env(home, KMS_ENDPOINT="htps://kms.example", **ENV_KEY)
    with pytest.raises(ConfigError, match=r"^KMS_ENDPOINT must be host:port"):
        connect(parse(), environ)


def test_secrets_stay_out_of_reprs(home: Path) -> None:
    args = parse("--access-key-id", "i", "--access-key-secret", "flag-secret")
    kms = connect(args, env(home))
    got = kms.credentials.current()
    for shown in (repr(kms), repr(got), repr(kms.credentials)):
        assert "flag-secret" not in shown


@pytest.mark.parametrize("command", ["produce", "consume", "kms", "seal", "unseal"])
def test_every_command_says_where_credentials_come_from_in_order(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from envelope_mq.shared.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    order = [
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ROLE_ARN",
        "config.json",
        "credentials.ini",
        "ECS",
        "ALIBABA_CLOUD_CREDENTIALS_URI",
    ]
    places = [text.find(name) for name in order]
    assert -1 not in places, text
    assert places == sorted(places)
