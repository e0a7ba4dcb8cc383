"""docs/streams.md stays true: its producer and consumer examples run, twice.

The second consumer run resumes after the offset the first one committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_kit import throwaway_queue
from docs_kit import example_env, examples, run_example
from envelope_mq.shared.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(emq_rabbitmq_url: str) -> Iterator[str]:
    with throwaway_queue(emq_rabbitmq_url, "emq-docs-stream") as name:
        yield name


def test_the_stream_examples_run_and_a_rerun_resumes(
    emq_producer_settings: Settings,
    emq_consumer_settings: Settings,
    queue: str,
    tmp_path: Path,
) -> None:
    blocks = examples("streams.md")
    (producer,) = [code for role, code in blocks if role == "producer"]
    (consumer,) = [code for role, code in blocks if role == "consumer"]
    assert not [code for role, code in blocks if role is None]
    produced = example_env(emq_producer_settings, queue)
    consuming = {
        **(example_env(emq_consumer_settings, queue) or {}),
        "EMQ_OFFSET_FILE": str(tmp_path / "events.offset"),
    }

    assert "published 5 events" in run_example(tmp_path, producer, produced)
    first = run_example(tmp_path, consumer, consuming)
    assert "read 5 events, acme event 0 first; position 4" in first
    run_example(tmp_path, producer, produced)
    second = run_example(tmp_path, consumer, consuming)
    assert "read 5 events, acme event 0 first; position 9" in second
    assert (tmp_path / "events.offset").read_text() == "9\n"
