"""A KMS emulator for tests: one seeded key with an alias and two principals.

The producer principal may only generate data keys and the consumer principal may
only decrypt them, as least-privilege RAM policies would grant it; the emulator
runs with strict signature checks, so credentials matter as in the cloud.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from envelope_mq.shared.config import Settings

__all__ = [
    "TEST_KEY_ALIAS",
    "Credentials",
    "KmsFixture",
    "Role",
    "emulator_seed",
    "running_emulator",
]

TEST_KEY_ALIAS = "alias/envelope-mq-test"

Role = Literal["producer", "consumer"]


@dataclass(frozen=True)
class Credentials:
    """An AccessKey pair of the emulator (development only, protects nothing)."""

    access_key_id: str
    access_key_secret: str = field(repr=False)


@dataclass(frozen=True)
class KmsFixture:
    """A running emulator and what a test needs to talk to it."""

    emulator: Any  # kms_emulator.Emulator; Any keeps its import lazy
    endpoint: str
    key_id: str
    alias: str
    producer: Credentials
    consumer: Credentials
    ca_file: str | None = None  # the emulator's generated CA when it serves HTTPS

    def settings(self, role: Role, rabbitmq_urls: Sequence[str]) -> Settings:
        """Settings for one role, pointed at this emulator and the given broker."""
        creds = self.producer if role == "producer" else self.consumer
        return Settings(
            rabbitmq_urls=tuple(rabbitmq_urls),
            kms_endpoint=self.endpoint,
            kms_ca_file=self.ca_file,
            kms_key_id=self.key_id,
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
        )


def emulator_seed(
    key_id: str, alias: str, producer: Credentials, consumer: Credentials
) -> dict[str, Any]:
    """The emulator seed (docs/kms-emulator-semantics.md) for one key, two roles."""
    keys = [key_id, alias]
    return {
        "principals": [
            {
                "access_key_id": producer.access_key_id,
                "access_key_secret": producer.access_key_secret,
                "actions": ["GenerateDataKey"],
                "keys": keys,
            },
            {
                "access_key_id": consumer.access_key_id,
                "access_key_secret": consumer.access_key_secret,
                "actions": ["Decrypt"],
                "keys": keys,
            },
        ],
        "keys": [
            {
                "key_id": key_id,
                "description": "envelope-mq test key",
                "key_spec": "Aliyun_AES_256",
                "state": "Enabled",
                "aliases": [alias],
            }
        ],
    }


@contextmanager
def running_emulator(
    alias: str = TEST_KEY_ALIAS, *, tls: bool = False, **options: Any
) -> Iterator[KmsFixture]:
    """Run an in-process emulator on a free port with fresh key and credentials.

    With ``tls`` it serves HTTPS under a CA generated for this run: ``endpoint``
    is then ``https://127.0.0.1:<port>`` and ``ca_file`` the CA to trust.
    ``options`` go to the Emulator (``clock_offset``, ...).
    """
    from envelope_mq.kms_emulator import Emulator

    # Fresh random ids per run: nothing can depend on a value from another run.
    tag = uuid.uuid4().hex[:12]
    producer = Credentials(f"emq-producer-{tag}", uuid.uuid4().hex)
    consumer = Credentials(f"emq-consumer-{tag}", uuid.uuid4().hex)
    key_id = str(uuid.uuid4())
    seed = emulator_seed(key_id, alias, producer, consumer)
    with Emulator(
        seed=seed, auth="strict", admin=True, port=0, tls=tls, **options
    ) as emulator:
        ca_file = emulator.ca_file
        yield KmsFixture(
            emulator=emulator,
            # With TLS the scheme must be written: a bare loopback endpoint
            # means plain HTTP to AliyunKms.
            endpoint=emulator.url if tls else emulator.endpoint,
            ca_file=str(ca_file) if ca_file is not None else None,
            key_id=key_id,
            alias=alias,
            producer=producer,
            consumer=consumer,
        )
