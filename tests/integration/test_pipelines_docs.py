"""docs/pipelines.md stays true: its two-stage pipeline runs, program by program.

Each ``<!-- pipeline: ROLE -->`` block runs as its own script with its own
principal of a KMS emulator holding three master keys (the tenant's, the
tenant stage's, the analytics stage's), allowed exactly what the document
says: so a stage that sealed under the wrong key, or a consumer that could
read the tenant's key, fails the run.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from command_kit import env_for
from docs_kit import DOCS, run_example
from envelope_mq.shared.config import Settings

from envelope_mq.testing.kms import Credentials

pytestmark = pytest.mark.integration

BLOCK = re.compile(
    r"<!-- pipeline: ([a-z-]+) -->\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL
)
ROLES = ("producer", "tenant-stage", "analytics-stage", "consumer")
KEYS = ("tenant", "tenant-stage", "analytics")
# role -> (the key it seals under, or that names it; actions; keys it may use)
GRANTS = {
    "producer": ("tenant", ["GenerateDataKey"], ["tenant"]),
    "tenant-stage": (
        "tenant-stage",
        ["Decrypt", "GenerateDataKey"],
        ["tenant", "tenant-stage"],
    ),
    "analytics-stage": (
        "analytics",
        ["Decrypt", "GenerateDataKey"],
        ["tenant-stage", "analytics"],
    ),
    "consumer": ("analytics", ["Decrypt"], ["analytics"]),
}


@pytest.fixture
def settings(emq_rabbitmq_url: str) -> Iterator[dict[str, Settings]]:
    from envelope_mq.kms_emulator import Emulator

    tag = uuid.uuid4().hex[:8]
    keys = {name: str(uuid.uuid4()) for name in KEYS}
    creds = {role: Credentials(f"emq-{role}-{tag}", uuid.uuid4().hex) for role in ROLES}
    seed: dict[str, Any] = {
        "principals": [
            {
                "access_key_id": creds[role].access_key_id,
                "access_key_secret": creds[role].access_key_secret,
                "actions": actions,
                "keys": [keys[k] for k in allowed],
            }
            for role, (_own, actions, allowed) in GRANTS.items()
        ],
        "keys": [
            {"key_id": keys[name], "key_spec": "Aliyun_AES_256", "state": "Enabled"}
            for name in KEYS
        ],
    }
    with Emulator(seed=seed, auth="strict", port=0) as emulator:
        yield {
            role: Settings(
                rabbitmq_urls=(emq_rabbitmq_url,),
                kms_endpoint=emulator.endpoint,
                kms_key_id=keys[GRANTS[role][0]],
                access_key_id=creds[role].access_key_id,
                access_key_secret=creds[role].access_key_secret,
            )
            for role in ROLES
        }


@pytest.fixture
def prefix(emq_rabbitmq_url: str) -> Iterator[str]:
    name = f"emq-docs-pipeline-{uuid.uuid4().hex[:10]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(emq_rabbitmq_url))
    try:
        channel = connection.channel()
        for queue in ("orders", "redacted", "analytics"):
            for suffix in ("", ".quarantine"):
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    channel.queue_delete(f"{name}-{queue}{suffix}")
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def test_the_two_stage_pipeline_runs_program_by_program(
    settings: dict[str, Settings], prefix: str, tmp_path: Path
) -> None:
    text = (DOCS / "pipelines.md").read_text(encoding="utf-8")
    blocks = {role: code for role, code in BLOCK.findall(text)}
    assert sorted(blocks) == sorted(ROLES)
    out = {}
    for role in ROLES:
        env = {**env_for(settings[role]), "EMQ_QUEUE": prefix}
        out[role] = run_example(tmp_path, blocks[role], env)
    assert "published 3 orders" in out["producer"]
    assert "tenant stage: 3 orders in, 2 out" in out["tenant-stage"]
    assert "analytics stage: 2 in, 2 out" in out["analytics-stage"]
    lines = out["consumer"].splitlines()
    assert sorted(lines) == [
        "analytics {'tenant': 'acme', 'amount': 120}",
        "analytics {'tenant': 'acme', 'amount': 35}",
    ]
    # What the document says it prints, it prints.
    for line in lines:
        assert f"`{line}`" in text
