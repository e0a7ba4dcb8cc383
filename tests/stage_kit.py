"""A pipeline hop: its KMS emulator, its queues, its producer and consumer
(tests/ is on sys.path).

Two master keys, as two trust domains: the tenant's (``key_in``) and the
stage's (``key_out``). Three principals: the producer may GenerateDataKey
under the tenant's key, the stage may Decrypt and GenerateDataKey under both
(the emulator grants actions times keys), the consumer may Decrypt under the
stage's key only — so a downstream consumer cannot read the tenant's
messages, and nothing reaches it unless the stage re-sealed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from broker_kit import delete
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings

from envelope_mq.testing.kms import Credentials

__all__ = [
    "STAGE_CONTEXT",
    "PipelineKms",
    "Role",
    "hop_topologies",
    "pipeline_kms",
    "publish",
    "read_all",
]

# The context the stage seals its outputs under.
STAGE_CONTEXT = {"stage": "analytics"}
EXPIRES = {"x-expires": 300_000}

Role = Literal["producer", "stage", "consumer"]


@dataclass(frozen=True)
class PipelineKms:
    """A running two-key emulator and its three principals."""

    emulator: Any
    endpoint: str
    key_in: str
    key_out: str
    principals: dict[str, Credentials]

    def settings(self, role: Role, urls: Sequence[str]) -> Settings:
        """Settings of ``role``; its master key is the one it seals under."""
        creds = self.principals[role]
        return Settings(
            rabbitmq_urls=tuple(urls),
            kms_endpoint=self.endpoint,
            kms_key_id=self.key_in if role == "producer" else self.key_out,
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
        )

    def env(self, role: Role, urls: Sequence[str]) -> dict[str, str]:
        """The environment a command of ``role`` reads its settings from."""
        creds = self.principals[role]
        return {
            "RABBITMQ_URL": ",".join(urls),
            "KMS_ENDPOINT": self.endpoint,
            "KMS_KEY_ID": self.key_in if role == "producer" else self.key_out,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": creds.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds.access_key_secret,
        }


def _key(key_id: str, description: str) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "description": description,
        "key_spec": "Aliyun_AES_256",
        "state": "Enabled",
        "aliases": [],
    }


@contextmanager
def pipeline_kms() -> Iterator[PipelineKms]:
    """An in-process emulator on a free port, fresh keys and credentials."""
    from envelope_mq.kms_emulator import Emulator

    tag = uuid.uuid4().hex[:10]
    key_in, key_out = str(uuid.uuid4()), str(uuid.uuid4())
    principals = {
        role: Credentials(f"emq-{role}-{tag}", uuid.uuid4().hex)
        for role in ("producer", "stage", "consumer")
    }

    def grant(role: str, actions: list[str], keys: list[str]) -> dict[str, Any]:
        creds = principals[role]
        return {
            "access_key_id": creds.access_key_id,
            "access_key_secret": creds.access_key_secret,
            "actions": actions,
            "keys": keys,
        }

    seed = {
        "principals": [
            grant("producer", ["GenerateDataKey"], [key_in]),
            grant("stage", ["Decrypt", "GenerateDataKey"], [key_in, key_out]),
            grant("consumer", ["Decrypt"], [key_out]),
        ],
        "keys": [_key(key_in, "tenant key"), _key(key_out, "stage key")],
    }
    with Emulator(seed=seed, auth="strict", port=0) as emulator:
        yield PipelineKms(emulator, emulator.endpoint, key_in, key_out, principals)


@contextmanager
def hop_topologies(
    url: str, *, plain: bool, name: str = "stage"
) -> Iterator[tuple[Topology, Topology]]:
    """Input and output on one exchange, deleted afterwards; ``plain``: as the
    commands declare them (no expiry, the exchange kept)."""
    tag = uuid.uuid4().hex[:8]
    exchange = f"emq-test-{name}-x-{tag}"
    made = tuple(
        Topology(
            queue=f"emq-test-{name}-{side}-{tag}",
            exchange=exchange,
            queue_arguments={} if plain else EXPIRES,
            exchange_auto_delete=not plain,
        )
        for side in ("in", "out")
    )
    yield made[0], made[1]
    delete(url, [q for t in made for q in (t.queue, t.quarantine_queue)], [exchange])


def publish(
    kms: PipelineKms, url: str, topology: Topology, bodies: list[bytes]
) -> list[str]:
    """Publish ``bodies`` as the tenant's producer; their message ids."""
    with EncryptedPublisher.from_settings(
        kms.settings("producer", [url]), topology, context={"tenant": "a"}
    ) as publisher:
        return [publisher.send(body) for body in bodies]


def read_all(
    kms: PipelineKms, url: str, topology: Topology, count: int
) -> list[ReceivedMessage]:
    """``count`` messages read as the downstream consumer, none quarantined."""
    got: list[ReceivedMessage] = []
    consumer = EncryptedConsumer.from_settings(
        kms.settings("consumer", [url]), topology, got.append
    )
    stats = consumer.run(count=count)
    assert stats.quarantined == {}
    return got
