"""An emulator with two master keys and a principal per role, for identity tests.

Key A and key B (B also as ``alias/tenant-b``). Producer A may generate data
keys under A only, producer B under B only; the consumer may Decrypt under
both and DescribeKey them (for ``--allow-key``); the describer may only
DescribeKey (a consumer whose RAM policy forgot Decrypt).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from envelope_mq.shared.config import Settings
from envelope_mq.shared.kms import AliyunKms, DataKey, UnwrappedKey

from envelope_mq.testing.kms import Credentials

ALIAS_B = "alias/tenant-b"


@dataclass(frozen=True)
class TwoKeys:
    """A running two-key emulator and its principals."""

    emulator: Any
    key_a: str
    key_b: str
    producer_a: Credentials
    producer_b: Credentials
    consumer: Credentials
    describer: Credentials

    def settings(self, creds: Credentials, urls: tuple[str, ...]) -> Settings:
        """Settings for ``creds`` against this emulator and the broker at ``urls``."""
        return Settings(
            rabbitmq_urls=urls,
            kms_endpoint=self.emulator.endpoint,
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
        )


def _principal(creds: Credentials, actions: list[str], keys: list[str]) -> Any:
    return {
        "access_key_id": creds.access_key_id,
        "access_key_secret": creds.access_key_secret,
        "actions": actions,
        "keys": keys,
    }


@contextmanager
def two_key_emulator() -> Iterator[TwoKeys]:
    """Run the emulator in process, strict signatures, fresh ids."""
    from envelope_mq.kms_emulator import Emulator

    tag = uuid.uuid4().hex[:10]
    creds = {
        role: Credentials(f"emq-{role}-{tag}", uuid.uuid4().hex)
        for role in ("producer-a", "producer-b", "consumer", "describer")
    }
    key_a, key_b = str(uuid.uuid4()), str(uuid.uuid4())
    seed = {
        "principals": [
            _principal(creds["producer-a"], ["GenerateDataKey"], [key_a]),
            _principal(creds["producer-b"], ["GenerateDataKey"], [key_b, ALIAS_B]),
            _principal(creds["consumer"], ["Decrypt", "DescribeKey"], ["*"]),
            _principal(creds["describer"], ["DescribeKey"], ["*"]),
        ],
        "keys": [
            {"key_id": key_a, "key_spec": "Aliyun_AES_256", "state": "Enabled"},
            {
                "key_id": key_b,
                "key_spec": "Aliyun_AES_256",
                "state": "Enabled",
                "aliases": [ALIAS_B],
            },
        ],
    }
    with Emulator(seed=seed, auth="strict", admin=True, port=0) as emulator:
        yield TwoKeys(
            emulator,
            key_a,
            key_b,
            creds["producer-a"],
            creds["producer-b"],
            creds["consumer"],
            creds["describer"],
        )


class ClaimingKms:
    """A producer's KMS client that writes another key's id into what it seals.

    GenerateDataKey really runs under the key the credentials allow; only the
    key id handed to the Sealer (so the x-emq-key-id header, bound into the
    tag) is ``claimed``: the spoof of issue 11.
    """

    def __init__(self, kms: AliyunKms, held: str, claimed: str) -> None:
        self.kms, self.held, self.claimed = kms, held, claimed

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        real = self.kms.generate_data_key(self.held, context)
        return DataKey(real.plaintext, real.wrapped, self.claimed)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        return self.kms.decrypt_data_key(wrapped, context)
