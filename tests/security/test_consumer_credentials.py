"""An operator's mistake loses nothing: a consumer KMS refuses stops, messages stay.

``envelope-mq consume`` runs for real (a subprocess, the official SDK, the
strict emulator) with a wrong AccessKey secret, an unknown AccessKeyId, a clock
20 minutes off, or a RAM policy without Decrypt for the key it is told to
read (``--allow-key``). Each time it exits non-zero naming the KMS code and
the likely cause, quarantines nothing, and every message is still in the
queue: a consumer with the configuration fixed then handles all of them.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator

import pytest
from broker_kit import queue_depth
from command_kit import ENVELOPE_MQ, env_for
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.amqp import Topology
from identity_kit import TwoKeys, two_key_emulator
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.security

COUNT = 5
TIMEOUT = 120
# KMS answers a request signed more than 15 minutes away from its clock so.
SKEW_SECONDS = 20 * 60


@pytest.fixture
def keys() -> Iterator[TwoKeys]:
    with two_key_emulator() as running:
        yield running


MISTAKES = {
    # name: (code KMS gives, likely cause the line names, halts at start)
    "wrong secret": ("InvalidAccessKeySecret", "wrong AccessKey secret", False),
    "unknown AccessKeyId": (
        "InvalidAccessKeyId.NotFound",
        "unknown AccessKeyId",
        False,
    ),
    "clock 20 minutes ahead": ("InvalidTimeStamp.Expired", "clock skew", False),
    "no Decrypt for an allowed key": ("Forbidden.NoPermission", "RAM policy", False),
    "wrong secret, --allow-key": ("InvalidAccessKeySecret", "wrong AccessKey", True),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_consumer_kms_refuses_exits_non_zero_and_leaves_every_message_queued(
    keys: TwoKeys, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames, mistake: str
) -> None:
    code, cause, _at_start = MISTAKES[mistake]
    ledger = MessageLedger(f"consumer refused by KMS: {mistake}")
    urls = (emq_rabbitmq_url,)
    # As `envelope-mq consume` declares it (no expiry: the fixture deletes it).
    topology = scenario_topology(
        emq_amqp_names.queue, emq_amqp_names.exchange, expires=False
    )
    publish(keys, urls, topology, ledger)

    good = keys.settings(keys.consumer, urls)
    broken, extra = good, []
    if mistake.startswith("wrong secret"):
        broken = dataclasses.replace(good, access_key_secret="not-the-secret")
    elif mistake == "unknown AccessKeyId":
        broken = dataclasses.replace(good, access_key_id="LTAI-no-such-key")
    elif mistake == "no Decrypt for an allowed key":
        broken = keys.settings(keys.describer, urls)
    if mistake.endswith("--allow-key") or mistake.startswith("no Decrypt"):
        extra = ["--allow-key", keys.key_b]
    if mistake.startswith("clock"):
        keys.emulator.clock_offset = -SKEW_SECONDS  # so we look 20 min ahead
    ledger.fault(f"consume with {mistake}", 1)
    done = subprocess.run(
        [
            ENVELOPE_MQ,
            "consume",
            "--queue",
            topology.queue,
            "--exchange",
            topology.exchange,
            "--count",
            str(COUNT),
            *extra,
        ],
        env=env_for(broken),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    keys.emulator.clock_offset = 0
    assert done.returncode == 1, done.stderr
    assert code in done.stderr
    assert cause in done.stderr
    assert "Traceback" not in done.stderr
    still_queued = queue_depth(emq_rabbitmq_url, topology.queue)
    ledger.fault("messages still in the queue after consume exited", still_queued)
    assert still_queued == COUNT
    assert queue_depth(emq_rabbitmq_url, topology.quarantine_queue) == 0

    consumer = EncryptedConsumer.from_settings(good, topology, ledger_handler(ledger))
    with QuarantineWatcher(list(urls), topology, ledger), ConsumerThread(consumer):
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == COUNT
    assert report["quarantined"] == {}


def publish(
    keys: TwoKeys, urls: tuple[str, ...], topology: Topology, ledger: MessageLedger
) -> None:
    settings = keys.settings(keys.producer_b, urls)
    with RawPublisher(settings, topology, key_id=keys.key_b) as publisher:
        for i in range(COUNT):
            mid, body = f"creds-{i}", payload("creds", i, 64)
            ledger.published(mid, body)
            publisher.send(publisher.seal(body, mid), mid)
