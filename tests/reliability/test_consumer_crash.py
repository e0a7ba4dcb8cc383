"""Consumer processes killed with SIGKILL mid-stream, three times, and restarted.

The consumers are real ``envelope-mq consume`` processes writing JSON lines to
a file; the ledger reads the files. A killed consumer leaves its unacknowledged
messages to the broker, which delivers them to the next one: duplicates are
expected and counted, losses are not allowed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from crash_kit import Processes, consumer_env, consumers_killed_while_publishing
from scenario_kit import scenario_topology

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.reliability

MESSAGES = 8_000
KILLS = 3
LINES_BEFORE_KILL = 1_000


def test_consumers_killed_three_times_lose_nothing(
    emq_kms: KmsFixture,
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
    tmp_path: Path,
    processes: Processes,
) -> None:
    ledger = MessageLedger("consumer SIGKILLed 3 times mid-stream, restarted")
    # The CLI declares the queue with no extra arguments, so we do too; the
    # emq_amqp_names fixture deletes it afterwards.
    topology = scenario_topology(
        emq_amqp_names.queue, emq_amqp_names.exchange, expires=False
    )
    env = consumer_env(emq_kms, emq_rabbitmq_url)
    args = ["--queue", topology.queue, "--exchange", topology.exchange]
    args += ["--prefetch", "200"]
    errors, exit_code = consumers_killed_while_publishing(
        emq_kms,
        emq_rabbitmq_url,
        topology,
        ledger,
        lambda out: processes.consume(env, args, out),
        tmp_path,
        messages=MESSAGES,
        kills=KILLS,
        lines_before_kill=LINES_BEFORE_KILL,
    )
    assert exit_code == 0
    assert errors == []
    report = ledger.check()
    assert report["quarantined"] == {}
    assert report["published"] == MESSAGES
