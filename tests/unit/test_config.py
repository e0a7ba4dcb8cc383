"""Settings.from_env: defaults, overrides, bad values, and no secret in the repr."""

from __future__ import annotations

import dataclasses

import pytest
from envelope_mq.shared.config import (
    DEFAULT_RABBITMQ_URL,
    MAX_DATA_KEY_MESSAGES,
    Settings,
)
from envelope_mq.shared.errors import ConfigError

FULL = {
    "RABBITMQ_URL": "amqp://u:p@mq1:5672/%2F, amqp://u:p@mq2:5672/%2F",
    "KMS_ENDPOINT": "127.0.0.1:8080",
    "KMS_KEY_ID": "alias/orders",
    "ALIBABA_CLOUD_REGION_ID": "cn-shanghai",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI-test",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s3cr3t-value",
    "EMQ_DATA_KEY_MAX_AGE": "60.5",
    "EMQ_DATA_KEY_MAX_MESSAGES": "1000",
    "EMQ_KEY_CACHE_SIZE": "16",
    "EMQ_KEY_CACHE_TTL": "120",
    "EMQ_WIRE_VERSION": "1",
}


def test_an_empty_environment_gives_local_development_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.rabbitmq_urls == (DEFAULT_RABBITMQ_URL,)
    assert settings.rabbitmq_urls == ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    assert (settings.kms_endpoint, settings.kms_key_id) == (None, None)
    assert (settings.access_key_id, settings.access_key_secret) == (None, None)
    assert settings.region_id == "cn-hangzhou"
    assert (settings.data_key_max_age, settings.data_key_max_messages) == (300.0, 2**24)
    assert (settings.key_cache_size, settings.key_cache_ttl) == (1024, 3600.0)
    assert settings.wire_version == 2


def test_every_variable_overrides_its_default() -> None:
    settings = Settings.from_env(FULL)
    assert settings.rabbitmq_urls == (
        "amqp://u:p@mq1:5672/%2F",
        "amqp://u:p@mq2:5672/%2F",
    )
    assert settings.kms_endpoint == "127.0.0.1:8080"
    assert settings.kms_key_id == "alias/orders"
    assert settings.region_id == "cn-shanghai"
    assert (settings.access_key_id, settings.access_key_secret) == (
        "LTAI-test",
        "s3cr3t-value",
    )
    assert settings.data_key_max_age == 60.5
    assert settings.data_key_max_messages == 1000
    assert settings.key_cache_size == 16
    assert settings.key_cache_ttl == 120.0
    assert settings.wire_version == 1


def test_empty_variables_count_as_unset() -> None:
    assert Settings.from_env(dict.fromkeys(FULL, "")) == Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().region_id = "x"  # type: ignore[misc]


def test_the_secret_is_not_in_the_repr() -> None:
    text = repr(Settings.from_env(FULL))
    assert "s3cr3t-value" not in text
    assert "LTAI-test" in text


def test_broker_passwords_are_not_in_the_repr() -> None:
    env = {"RABBITMQ_URL": "amqp://app:broker-pass-9@mq1:5672/%2F"}
    assert "broker-pass-9" not in repr(Settings.from_env(env))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EMQ_DATA_KEY_MAX_AGE", "five"),
        ("EMQ_DATA_KEY_MAX_AGE", "nan"),
        ("EMQ_DATA_KEY_MAX_AGE", "inf"),
        ("EMQ_DATA_KEY_MAX_AGE", "0"),
        ("EMQ_DATA_KEY_MAX_AGE", "-1"),
        ("EMQ_DATA_KEY_MAX_MESSAGES", "lots"),
        ("EMQ_DATA_KEY_MAX_MESSAGES", "2.5"),
        ("EMQ_DATA_KEY_MAX_MESSAGES", "inf"),
        ("EMQ_DATA_KEY_MAX_MESSAGES", "nan"),
        ("EMQ_DATA_KEY_MAX_MESSAGES", "0"),
        ("EMQ_KEY_CACHE_SIZE", "1e3"),
        ("EMQ_KEY_CACHE_SIZE", "0"),
        ("EMQ_KEY_CACHE_TTL", "never"),
        ("EMQ_KEY_CACHE_TTL", "0"),
        ("EMQ_KEY_CACHE_TTL", "nan"),
        ("EMQ_WIRE_VERSION", "3"),
        ("EMQ_WIRE_VERSION", "v2"),
    ],
)
def test_a_bad_number_is_a_config_error_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_max_messages_may_reach_but_not_pass_the_gcm_nonce_bound() -> None:
    at_bound = Settings.from_env({"EMQ_DATA_KEY_MAX_MESSAGES": str(2**32)})
    assert at_bound.data_key_max_messages == MAX_DATA_KEY_MESSAGES == 2**32
    with pytest.raises(ConfigError, match="2\\*\\*32"):
        Settings.from_env({"EMQ_DATA_KEY_MAX_MESSAGES": str(2**32 + 1)})


def test_a_url_list_with_no_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RABBITMQ_URL"):
        Settings.from_env({"RABBITMQ_URL": " , "})


@pytest.mark.parametrize("field", ["data_key_max_age", "key_cache_ttl"])
def test_a_nan_duration_built_in_code_is_a_config_error(field: str) -> None:
    with pytest.raises(ConfigError):
        Settings(**{field: float("nan")})  # type: ignore[arg-type]


def test_extra_wrapped_copies_need_wire_format_2() -> None:
    with pytest.raises(ConfigError, match="KMS_WRAP_ALSO needs wire format 2"):
        Settings.from_env({"EMQ_WIRE_VERSION": "1", "KMS_WRAP_ALSO": "cn-sh=key-b"})
