"""Crypto-shredding: two tenants' events in one stream, under two master keys.

Tenant A's key is disabled, then scheduled for deletion (``envelope-mq kms
shred``); each replay of the stream opens every event of tenant B and none of
A's, each of which is quarantined with a reason naming its key's state, at one
Decrypt per data key (no hot loop). ``envelope-mq kms unshred`` brings A back.
Real broker, real emulator (strict signatures, least-privilege principals).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.streams import OffsetSpec, StreamCursor
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.kms_emulator import Emulator
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.cli import main
from envelope_mq.shared.config import Settings

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
EVENTS = 60  # per tenant
PER_DATA_KEY = 10  # events per data key: 6 data keys per tenant
ADMIN = ("shred-admin", "shred-admin-secret-" + uuid.uuid4().hex[:8])
PRODUCER = ("shred-producer", "shred-producer-secret")
CONSUMER = ("shred-consumer", "shred-consumer-secret")


@dataclasses.dataclass(frozen=True)
class Tenants:
    emulator: Emulator
    key_a: str
    key_b: str

    def settings(self, who: tuple[str, str], urls: tuple[str, ...]) -> Settings:
        return Settings(
            rabbitmq_urls=urls,
            kms_endpoint=self.emulator.endpoint,
            access_key_id=who[0],
            access_key_secret=who[1],
            data_key_max_messages=PER_DATA_KEY,
        )


@pytest.fixture
def tenants() -> Iterator[Tenants]:
    key_a, key_b = str(uuid.uuid4()), str(uuid.uuid4())
    keys = [key_a, key_b]
    seed = {
        "principals": [
            {
                "access_key_id": PRODUCER[0],
                "access_key_secret": PRODUCER[1],
                "actions": ["GenerateDataKey"],
                "keys": keys,
            },
            {
                "access_key_id": CONSUMER[0],
                "access_key_secret": CONSUMER[1],
                "actions": ["Decrypt"],
                "keys": keys,
            },
            {
                "access_key_id": ADMIN[0],
                "access_key_secret": ADMIN[1],
                "actions": [
                    "DescribeKey",
                    "DisableKey",
                    "EnableKey",
                    "ScheduleKeyDeletion",
                    "CancelKeyDeletion",
                ],
                "keys": keys,
            },
        ],
        "keys": [
            {"key_id": key_a, "description": "tenant a", "aliases": ["alias/a"]},
            {"key_id": key_b, "description": "tenant b", "aliases": ["alias/b"]},
        ],
    }
    with Emulator(seed=seed, auth="strict", admin=False, port=0) as emulator:
        yield Tenants(emulator, key_a, key_b)


@pytest.fixture
def kms_cli(
    tenants: Tenants,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> Any:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ADMIN[0])
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ADMIN[1])
    monkeypatch.setenv("KMS_ENDPOINT", tenants.emulator.endpoint)

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["kms", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def key_state(kms_cli: Any, key_id: str) -> str:
    code, out, err = kms_cli("describe-key", "--key-id", key_id)
    assert code == 0, err
    return str(json.loads(out)["KeyMetadata"]["KeyState"])


class Replay:
    """Reads the whole stream from ``first`` with a fresh consumer."""

    def __init__(self, settings: Settings, topology: Topology, total: int) -> None:
        self.opened: Counter[str] = Counter()  # by tenant
        self.lock = threading.Lock()
        self.consumer = EncryptedConsumer.from_settings(
            settings,
            topology,
            self._handle,
            prefetch=100,
            stream=StreamCursor(OffsetSpec.parse("first")),
        )
        self.total = total

    def _handle(self, message: ReceivedMessage) -> None:
        with self.lock:
            self.opened[message.context["tenant"]] += 1

    def run(self) -> Counter[str]:
        """Read until every event was opened or quarantined; the quarantine reasons."""
        stats = self.consumer.stats
        error: list[BaseException] = []

        def target() -> None:
            try:
                self.consumer.run()
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=target, name="replay")
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        try:
            while stats.handled + sum(stats.quarantined.values()) < self.total:
                assert time.monotonic() < deadline, (stats, self.opened)
                assert not error, error
                time.sleep(0.05)
        finally:
            self.consumer.stop()
            thread.join(TIMEOUT)
        assert not error, error
        return Counter(stats.quarantined)


def test_shredding_tenant_a_leaves_tenant_b_readable_and_unshred_restores_a(
    tenants: Tenants,
    kms_cli: Any,
    emq_rabbitmq_urls: tuple[str, ...],
    emq_stream_topology: Topology,
) -> None:
    topology = emq_stream_topology
    producer = tenants.settings(PRODUCER, emq_rabbitmq_urls)
    publishers = {
        tenant: EncryptedPublisher.from_settings(
            producer, topology, key_id=key, context={"tenant": tenant}
        ).connect()
        for tenant, key in (("a", tenants.key_a), ("b", tenants.key_b))
    }
    try:
        for i in range(EVENTS):  # interleaved, as a shared stream holds them
            for tenant, publisher in publishers.items():
                publisher.send(f"{tenant} event {i}".encode(), timeout=TIMEOUT)
    finally:
        for publisher in publishers.values():
            publisher.close()
    consumer = tenants.settings(CONSUMER, emq_rabbitmq_urls)
    total = 2 * EVENTS
    data_keys = total // PER_DATA_KEY
    emulator = tenants.emulator

    def replay() -> tuple[Counter[str], Counter[str], int]:
        emulator.reset_request_count()
        run = Replay(consumer, topology, total)
        reasons = run.run()
        return run.opened, reasons, emulator.request_count.get("Decrypt", 0)

    opened, reasons, decrypts = replay()
    assert opened == {"a": EVENTS, "b": EVENTS}
    assert not reasons
    assert decrypts == data_keys

    # 1. Disabled: unreadable now, every event of A says so; B unaffected.
    code, _out, err = kms_cli("disable-key", "--key-id", tenants.key_a)
    assert code == 0, err
    opened, reasons, decrypts = replay()
    assert opened == {"b": EVENTS}
    assert reasons == {"key-disabled": EVENTS}
    assert decrypts == data_keys  # one refusal per data key: no hot loop

    # 2. shred: a dry run does nothing; without --yes and a terminal, nothing.
    code, _out, err = kms_cli("shred", "--key-id", "alias/a", "--dry-run")
    assert code == 0, err
    assert "ScheduleKeyDeletion (PendingWindowInDays=7)" in err
    assert "dry run" in err
    code, _out, err = kms_cli("shred", "--key-id", "alias/a")
    assert code == 1
    assert "--yes" in err
    assert key_state(kms_cli, tenants.key_a) == "Disabled"
    code, out, err = kms_cli("shred", "--key-id", "alias/a", "--yes")
    assert code == 0, err
    assert '"KeyState": "PendingDeletion"' in out
    assert key_state(kms_cli, tenants.key_b) == "Enabled"
    opened, reasons, decrypts = replay()
    assert opened == {"b": EVENTS}
    assert reasons == {"key-pending-deletion": EVENTS}
    assert decrypts == data_keys

    # 3. unshred within the window: every event of A opens again.
    code, out, err = kms_cli("unshred", "--key-id", tenants.key_a, "--yes")
    assert code == 0, err
    assert "CancelKeyDeletion then EnableKey" in err
    assert key_state(kms_cli, tenants.key_a) == "Enabled"
    opened, reasons, decrypts = replay()
    assert opened == {"a": EVENTS, "b": EVENTS}
    assert not reasons
    assert decrypts == data_keys


def test_shred_and_unshred_of_a_disabled_only_key(
    tenants: Tenants, kms_cli: Any
) -> None:
    code, _out, err = kms_cli("disable-key", "--key-id", tenants.key_b)
    assert code == 0, err
    code, _out, err = kms_cli("unshred", "--key-id", tenants.key_b, "--yes")
    assert code == 0, err
    assert "EnableKey" in err
    assert "CancelKeyDeletion" not in err
    assert key_state(kms_cli, tenants.key_b) == "Enabled"
    code, _out, err = kms_cli("unshred", "--key-id", tenants.key_b, "--yes")
    assert code == 0
    assert "nothing to undo" in err
    with pytest.raises(SystemExit) as refused:  # argparse: before any call
        kms_cli(
            "shred", "--key-id", tenants.key_b, "--yes", "--pending-window-in-days", "3"
        )
    assert refused.value.code == 2
    assert key_state(kms_cli, tenants.key_b) == "Enabled"
