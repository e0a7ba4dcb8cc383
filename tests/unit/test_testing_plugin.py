from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


# Platform-specific modules a Windows (or otherwise limited) Python lacks; a None
# entry in sys.modules makes their import fail as it would there.
UNIX_ONLY = ("pwd", "grp", "fcntl", "resource", "termios")


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a user's project of its own, in a fresh interpreter whose
    platform-specific modules are missing."""
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in UNIX_ONLY)
    code = f"import sys; {blocked}; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_users_pytest_run_loads_no_plugin_of_ours_unless_asked(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_user.py").write_text(
        "import sys\n\n"
        "def test_nothing_of_envelope_mq_is_loaded(pytestconfig):\n"
        "    plugins = pytestconfig.pluginmanager.list_name_plugin()\n"
        "    assert not [n for n, _ in plugins if 'envelope_mq' in str(n)]\n"
        "    assert not [m for m in sys.modules if m.startswith('envelope_mq')]\n",
        encoding="utf-8",
    )
    plain = run_pytest(tmp_path, "--fixtures", "-q")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "emq_" not in plain.stdout
    run = run_pytest(tmp_path, "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_the_opt_in_plugin_loads_without_unix_only_modules_and_prefixes_fixtures(
    tmp_path: Path,
) -> None:
    done = run_pytest(tmp_path, "-p", "envelope_mq.testing", "--fixtures")
    assert done.returncode == 0, done.stdout + done.stderr
    fixtures = re.findall(r"^(\w+)(?: \[\w+ scope\])? -- (\S+)", done.stdout, re.M)
    listed = {name for name, _ in fixtures}
    ours = {name for name, where in fixtures if "envelope_mq/testing/" in where}
    assert {
        "emq_kms",
        "emq_amqp_names",
        "emq_amqp_topology",
        "emq_stream_topology",
        "emq_rabbitmq_proxy",
        "emq_rabbitmq_node",
        "emq_rabbitmq_url",
        "emq_producer_settings",
        "emq_consumer_settings",
    } <= ours
    for unprefixed in ("kms", "amqp_topology", "rabbitmq_url", "producer_settings"):
        assert unprefixed not in listed


def test_importing_the_plugin_loads_no_broker_node_or_emulator_code() -> None:
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in UNIX_ONLY)
        + "import envelope_mq.testing, envelope_mq.testing.plugin\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(done.stdout.split())
    ours = {m for m in loaded if m.startswith("envelope_mq")}
    assert ours == {"envelope_mq", "envelope_mq.testing", "envelope_mq.testing.plugin"}
    assert not {"pika", "testcontainers", "cryptography"} & loaded
