from __future__ import annotations

import pytest

from envelope_mq.testing import plugin
from envelope_mq.testing.broker import start_broker
from envelope_mq.testing.kms import Credentials, KmsFixture, emulator_seed
from envelope_mq.testing.probe import free_port

PRODUCER = Credentials("p-ak", "p-secret")
CONSUMER = Credentials("c-ak", "c-secret")


def test_rabbitmq_url_wins_and_may_list_several_brokers() -> None:
    broker = start_broker({"RABBITMQ_URL": "amqp://a:1/, amqp://b:2/"})
    assert broker.kind == "env"
    assert broker.urls == ("amqp://a:1/", "amqp://b:2/")
    broker.close()  # nothing of ours to stop; must not fail


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_a_missing_broker_fails_the_test_on_ci(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true and no broker"):
        plugin._missing("no broker")


@pytest.mark.parametrize("value", [None, "false", ""])
def test_a_missing_broker_skips_the_test_off_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no broker"):
        plugin._missing("no broker")


def test_the_seed_gives_each_principal_one_action_on_the_key_and_its_alias() -> None:
    seed = emulator_seed("key-1", "alias/test", PRODUCER, CONSUMER)
    principals = {p["access_key_id"]: p for p in seed["principals"]}
    assert principals["p-ak"]["actions"] == ["GenerateDataKey"]
    assert principals["c-ak"]["actions"] == ["Decrypt"]
    assert principals["p-ak"]["keys"] == ["key-1", "alias/test"]
    [key] = seed["keys"]
    assert (key["key_id"], key["aliases"], key["state"]) == (
        "key-1",
        ["alias/test"],
        "Enabled",
    )


def test_role_settings_carry_that_roles_credentials_only() -> None:
    fixture = KmsFixture(
        emulator=None,
        endpoint="127.0.0.1:1234",
        key_id="key-1",
        alias="alias/test",
        producer=PRODUCER,
        consumer=CONSUMER,
    )
    producer = fixture.settings("producer", ["amqp://h/"])
    consumer = fixture.settings("consumer", ["amqp://h/"])
    assert (producer.access_key_id, producer.access_key_secret) == ("p-ak", "p-secret")
    assert (consumer.access_key_id, consumer.access_key_secret) == ("c-ak", "c-secret")
    assert producer.kms_endpoint == consumer.kms_endpoint == "127.0.0.1:1234"
    assert producer.kms_key_id == "key-1"
    assert producer.rabbitmq_urls == ("amqp://h/",)
    assert "p-secret" not in repr(producer)


def test_private_node_ports_avoid_those_rabbitmq_tools_and_the_shared_broker_use() -> (
    None
):
    reserved = {4369, 5672, 15672, 25672, *range(35672, 35683)}
    ports = {free_port() for _ in range(200)}
    assert not ports & reserved
    assert all(1024 < p < 32768 for p in ports)
