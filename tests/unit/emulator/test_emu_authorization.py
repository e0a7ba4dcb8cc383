"""Principals from the seed: actions and keys they may use; denials are 403."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.service import KmsService

ORDERS = "0b6c2b7e-2a8e-4f5f-9a3e-3a1c0c4f9d21"
BILLING = "1c7d3c8f-3b9f-4a6a-8b4f-4b2d1d5a0e32"
SEED: dict[str, Any] = {
    "principals": [
        {
            "access_key_id": "producer-ak",
            "access_key_secret": "producer-secret",
            "actions": [
                "GenerateDataKey",
                "GenerateDataKeyWithoutPlaintext",
                "DescribeKey",
            ],
            "keys": ["*"],
        },
        {
            "access_key_id": "consumer-ak",
            "access_key_secret": "consumer-secret",
            "actions": ["Decrypt", "DescribeKey"],
            "keys": ["*"],
        },
        {
            "access_key_id": "orders-ak",
            "access_key_secret": "orders-secret",
            "actions": ["*"],
            "keys": ["alias/orders"],
        },
        {
            "access_key_id": "billing-ak",
            "access_key_secret": "billing-secret",
            "actions": ["Encrypt", "Decrypt", "ReEncrypt", "ListKeys"],
            "keys": [BILLING],
        },
    ],
    "keys": [
        {"key_id": ORDERS, "aliases": ["alias/orders"]},
        {"key_id": BILLING, "aliases": ["alias/billing"]},
    ],
}


@pytest.fixture
def kms() -> Iterator[KmsService]:
    service = KmsService.open(seed=SEED)
    yield service
    service.close()


def as_(kms: KmsService, ak: str, action: str, **params: str) -> dict[str, Any]:
    principal = kms.principal(ak)
    assert principal is not None
    return kms.call(action, params, principal)


def denied(kms: KmsService, ak: str, action: str, **params: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        as_(kms, ak, action, **params)
    assert (info.value.status, info.value.code) == (403, "Forbidden.NoPermission")
    assert ak in info.value.message
    return info.value


def test_principal_lookup_and_secret_not_in_repr(kms: KmsService) -> None:
    producer = kms.principal("producer-ak")
    assert producer is not None
    assert producer.access_key_secret == "producer-secret"
    assert "producer-secret" not in repr(producer)
    assert kms.principal("nobody") is None


def test_producer_generates_but_cannot_decrypt(kms: KmsService) -> None:
    body = as_(kms, "producer-ak", "GenerateDataKey", KeyId="alias/orders")
    denied(kms, "producer-ak", "Decrypt", CiphertextBlob=body["CiphertextBlob"])
    denied(kms, "producer-ak", "Encrypt", KeyId="alias/orders", Plaintext="p")
    opened = as_(kms, "consumer-ak", "Decrypt", CiphertextBlob=body["CiphertextBlob"])
    assert opened["Plaintext"] == body["Plaintext"]


def test_consumer_decrypts_but_cannot_generate(kms: KmsService) -> None:
    denied(kms, "consumer-ak", "GenerateDataKey", KeyId="alias/orders")
    denied(kms, "consumer-ak", "CreateKey")


def test_key_scope_matches_by_alias_id_and_arn(kms: KmsService) -> None:
    arn = f"acs:kms:cn-hangzhou:1234567890123456:key/{ORDERS}"
    for ref in ("alias/orders", ORDERS, arn):
        assert as_(kms, "orders-ak", "Encrypt", KeyId=ref, Plaintext="p")
    exc = denied(kms, "orders-ak", "Encrypt", KeyId="alias/billing", Plaintext="p")
    assert BILLING in exc.message


def test_key_scope_applies_to_the_key_a_blob_names(kms: KmsService) -> None:
    blob = as_(kms, "billing-ak", "Encrypt", KeyId=BILLING, Plaintext="p")
    denied(kms, "orders-ak", "Decrypt", CiphertextBlob=blob["CiphertextBlob"])
    assert as_(kms, "billing-ak", "Decrypt", CiphertextBlob=blob["CiphertextBlob"])


def test_re_encrypt_needs_both_keys(kms: KmsService) -> None:
    blob = as_(kms, "billing-ak", "Encrypt", KeyId=BILLING, Plaintext="p")
    denied(
        kms,
        "billing-ak",
        "ReEncrypt",
        CiphertextBlob=blob["CiphertextBlob"],
        DestinationKeyId=ORDERS,
    )


def test_alias_scope_follows_the_alias_when_it_moves(kms: KmsService) -> None:
    kms.call("UpdateAlias", {"AliasName": "alias/orders", "KeyId": BILLING}, None)
    assert as_(kms, "orders-ak", "Encrypt", KeyId=BILLING, Plaintext="p")
    denied(kms, "orders-ak", "Encrypt", KeyId=ORDERS, Plaintext="p")


def test_alias_operations_need_the_keys_involved(kms: KmsService) -> None:
    denied(kms, "orders-ak", "CreateAlias", AliasName="alias/mine", KeyId=BILLING)
    denied(kms, "orders-ak", "UpdateAlias", AliasName="alias/billing", KeyId=ORDERS)
    denied(kms, "orders-ak", "UpdateAlias", AliasName="alias/orders", KeyId=BILLING)
    denied(kms, "orders-ak", "DeleteAlias", AliasName="alias/billing")
    as_(kms, "orders-ak", "CreateAlias", AliasName="alias/mine", KeyId=ORDERS)


def test_listing_needs_only_the_action(kms: KmsService) -> None:
    assert as_(kms, "billing-ak", "ListKeys")["TotalCount"] == 2
    denied(kms, "billing-ak", "ListAliases")


def test_describe_regions_is_open_to_every_principal(kms: KmsService) -> None:
    assert as_(kms, "consumer-ak", "DescribeRegions")["Regions"]


def test_no_principal_means_authentication_off(kms: KmsService) -> None:
    assert kms.call("GenerateDataKey", {"KeyId": "alias/billing"}, None)


def test_unknown_action_is_not_hidden_by_authorization(kms: KmsService) -> None:
    with pytest.raises(ApiError) as info:
        as_(kms, "consumer-ak", "NoSuchAction")
    assert info.value.code == "InvalidAction.NotFound"
