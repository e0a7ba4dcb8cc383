"""The README's library example, and what it needs to run: one emulator principal
allowed both halves (as the README's kms-emulator with KMS_EMULATOR_ACCESS_KEY_*
is), a queue of its own, the variables it reads."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from envelope_mq.shared.amqp import QUARANTINE_SUFFIX, connect_blocking
from envelope_mq.shared.errors import BrokerError

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-example: library -->"
DOCUMENTED_QUEUE = '"orders"'
EXPECTED_OUTPUT = "consumed 100 messages"


def library_example() -> str:
    """The Python block right after the marker in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    if found is None:
        raise AssertionError(f"README.md has no python block after {MARKER}")
    return found.group(1)


def example_for(queue: str) -> str:
    """The example, publishing to and consuming ``queue`` instead of orders."""
    code = library_example()
    if code.count(DOCUMENTED_QUEUE) != 1:
        raise AssertionError(f"the example should name its queue {DOCUMENTED_QUEUE}")
    return code.replace(DOCUMENTED_QUEUE, repr(queue))


@contextlib.contextmanager
def example_environment(rabbitmq_url: str) -> Iterator[tuple[dict[str, str], str]]:
    """An emulator with one all-actions principal and a key; the variables the
    example reads, and a fresh queue name (deleted afterwards)."""
    from envelope_mq.kms_emulator import Emulator

    tag = uuid.uuid4().hex[:12]
    access_key_id, secret = f"readme-{tag}", uuid.uuid4().hex
    key_id, alias = str(uuid.uuid4()), f"alias/readme-{tag}"
    seed = {
        "principals": [
            {
                "access_key_id": access_key_id,
                "access_key_secret": secret,
                "actions": ["*"],
                "keys": ["*"],
            }
        ],
        "keys": [
            {
                "key_id": key_id,
                "key_spec": "Aliyun_AES_256",
                "state": "Enabled",
                "aliases": [alias],
            }
        ],
    }
    queue = f"emq-readme-{tag}"
    with Emulator(seed=seed, auth="strict", port=0) as emulator:
        env = {
            "RABBITMQ_URL": rabbitmq_url,
            "KMS_ENDPOINT": emulator.endpoint,
            "KMS_KEY_ID": alias,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": secret,
        }
        try:
            yield env, queue
        finally:
            with contextlib.suppress(BrokerError):
                connection = connect_blocking(rabbitmq_url)
                try:
                    channel = connection.channel()
                    channel.queue_delete(queue)
                    channel.queue_delete(queue + QUARANTINE_SUFFIX)
                finally:
                    connection.close()
