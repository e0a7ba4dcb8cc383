"""The AWS Encryption SDK, set up as its documentation recommends for this job.

Imported only when the optional ``bench`` extra is installed. A caching
cryptographic materials manager over a local raw AES-256 wrapping key (no KMS
call on a cache hit, like our key caches) and the unsigned committing suite,
the fastest the SDK's default commitment policy accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import aws_encryption_sdk
from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
from aws_encryption_sdk.identifiers import (
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from aws_encryption_sdk.materials_managers.caching import (
    CachingCryptoMaterialsManager,
)

__all__ = ["esdk_round_trip"]

_SUITE = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY


def esdk_round_trip(
    plaintext: bytes, context: Mapping[str, str]
) -> Callable[[int], None]:
    """A function that encrypts and decrypts ``plaintext`` ``n`` times with the SDK."""
    master_key = RawMasterKey(
        provider_id="envelope-mq-bench",
        key_id=b"bench-wrapping-key",
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=os.urandom(32),
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )
    # The same limits as our producer's data key cache: 300 s, 2**24 messages.
    materials = CachingCryptoMaterialsManager(
        master_key_provider=master_key,
        cache=LocalCryptoMaterialsCache(capacity=1024),
        max_age=300.0,
        max_messages_encrypted=2**24,
    )
    client: Any = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    context = dict(context)

    def run(n: int) -> None:
        for _ in range(n):
            ciphertext, _header = client.encrypt(
                source=plaintext,
                materials_manager=materials,
                algorithm=_SUITE,
                encryption_context=context,
            )
            client.decrypt(source=ciphertext, materials_manager=materials)

    # Fill the cache outside any timing, and check the round trip once.
    ciphertext, _header = client.encrypt(
        source=plaintext,
        materials_manager=materials,
        algorithm=_SUITE,
        encryption_context=context,
    )
    decrypted, _header = client.decrypt(source=ciphertext, materials_manager=materials)
    if decrypted != plaintext:
        raise RuntimeError("the AWS Encryption SDK round trip changed the plaintext")
    return run
