"""Credential resolution: flags, then environment, then the aliyun CLI profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.shared.errors import ConfigError

from envelope_mq.credentials import Credentials, Flags, resolve

ENV = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "env-id",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret",
}


def profile(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "AK",
        "access_key_id": f"{name}-id",
        "access_key_secret": f"{name}-secret",
        "region_id": f"{name}-region",
        **fields,
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def write_config(
    home: Path, *profiles: dict[str, Any], current: str = "default"
) -> None:
    (home / ".aliyun").mkdir()
    config = {"current": current, "profiles": list(profiles), "meta_path": ""}
    (home / ".aliyun" / "config.json").write_text(json.dumps(config))


def test_flags_win_over_environment_and_profile(home: Path) -> None:
    write_config(home, profile("default"))
    flags = Flags(access_key_id="flag-id", access_key_secret="flag-secret", region="r1")
    got = resolve(flags, ENV, home)
    assert (got.access_key_id, got.access_key_secret) == ("flag-id", "flag-secret")
    assert got.region_id == "r1"
    assert got.source == "command-line flags"


def test_environment_wins_over_the_current_profile(home: Path) -> None:
    write_config(home, profile("default"))
    got = resolve(Flags(), ENV, home)
    assert (got.access_key_id, got.access_key_secret) == ("env-id", "env-secret")
    assert got.source == "environment"


def test_current_profile_is_used_without_flags_or_environment(home: Path) -> None:
    write_config(home, profile("default"), profile("work"), current="work")
    got = resolve(Flags(), {}, home)
    assert (got.access_key_id, got.access_key_secret) == ("work-id", "work-secret")
    assert got.region_id == "work-region"
    assert "'work'" in got.source


def test_named_profile_flag_wins_over_environment(home: Path) -> None:
    write_config(home, profile("default"), profile("lab"))
    got = resolve(Flags(profile="lab"), ENV, home)
    assert got.access_key_id == "lab-id"
    assert got.region_id == "lab-region"


def test_missing_everything_is_a_clear_error(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Flags(), {}, home)
    text = str(info.value)
    for hint in ("--access-key-id", "ALIBABA_CLOUD_ACCESS_KEY_ID", "config.json"):
        assert hint in text


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (Flags(access_key_id="only-id"), {}),
        (Flags(access_key_secret="only-secret"), {}),
        (Flags(), {"ALIBABA_CLOUD_ACCESS_KEY_ID": "only-id"}),
        (Flags(), {"ALIBABA_CLOUD_ACCESS_KEY_SECRET": "only-secret"}),
    ],
)
def test_half_an_access_key_is_an_error(
    home: Path, flags: Flags, env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError, match="go together"):
        resolve(flags, env, home)


def test_unknown_named_profile_is_an_error(home: Path) -> None:
    write_config(home, profile("default"))
    with pytest.raises(ConfigError, match="no profile 'nope'"):
        resolve(Flags(profile="nope"), ENV, home)


def test_named_profile_without_config_file_is_an_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Flags(profile="lab"), {}, home)


def test_current_profile_missing_from_the_file_is_an_error(home: Path) -> None:
    write_config(home, profile("other"), current="default")
    with pytest.raises(ConfigError, match="no profile 'default'"):
        resolve(Flags(), {}, home)


@pytest.mark.parametrize("mode", ["StsToken", "RamRoleArn", "EcsRamRole"])
def test_non_ak_profile_is_refused_with_its_mode(home: Path, mode: str) -> None:
    write_config(home, profile("default", mode=mode))
    with pytest.raises(ConfigError, match=mode):
        resolve(Flags(), {}, home)


def test_profile_without_keys_is_refused(home: Path) -> None:
    write_config(home, profile("default", access_key_id="", access_key_secret=""))
    with pytest.raises(ConfigError, match="no access_key_id"):
        resolve(Flags(), {}, home)


def test_malformed_config_file_error_does_not_echo_its_content(home: Path) -> None:
    (home / ".aliyun").mkdir()
    (home / ".aliyun" / "config.json").write_text('{"access_key_secret": "s3cr3t" oops')
    with pytest.raises(ConfigError) as info:
        resolve(Flags(), {}, home)
    assert "s3cr3t" not in str(info.value)


def test_region_comes_from_flag_then_environment_then_profile_then_default(
    home: Path,
) -> None:
    keys = Flags(access_key_id="i", access_key_secret="s")
    assert resolve(keys, {}, home).region_id == "cn-hangzhou"
    write_config(home, profile("default"))
    assert resolve(keys, {}, home).region_id == "default-region"
    env = {"ALIBABA_CLOUD_REGION_ID": "env-region"}
    assert resolve(keys, env, home).region_id == "env-region"
    with_region = Flags(access_key_id="i", access_key_secret="s", region="flag-region")
    assert resolve(with_region, env, home).region_id == "flag-region"


def test_endpoint_comes_from_flag_then_kms_endpoint(home: Path) -> None:
    env = {**ENV, "KMS_ENDPOINT": "127.0.0.1:8600"}
    assert resolve(Flags(), env, home).endpoint == "127.0.0.1:8600"
    assert resolve(Flags(endpoint="127.0.0.1:9"), env, home).endpoint == "127.0.0.1:9"
    assert resolve(Flags(), ENV, home).endpoint is None


def test_secrets_stay_out_of_reprs(home: Path) -> None:
    got = resolve(Flags(), ENV, home)
    assert "env-secret" not in repr(got)
    flags = Flags(access_key_id="i", access_key_secret="flag-secret")
    assert "flag-secret" not in repr(flags)
    assert isinstance(got, Credentials)
