"""Contract: Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext), ReEncrypt and the
EncryptionContext, through each official client flavour."""

from __future__ import annotations

import base64

import pytest
from kms_clients import FLAVOURS, KmsCallError, KmsClient, NewKey, Target

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "plaintext",
    ["aGVsbG8=", "hello world+/=*~ 中", "x" * 6144, '{"json": "is just text"}'],
    ids=["base64", "unicode-and-reserved", "6KB", "json-text"],
)
def test_decrypt_returns_the_encrypted_plaintext_exactly(
    client: KmsClient, target: Target, plaintext: str
) -> None:
    sealed = client.call("Encrypt", KeyId=target.key_id, Plaintext=plaintext)
    opened = client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])
    assert opened["Plaintext"] == plaintext


def test_encrypt_and_decrypt_name_the_key_and_its_primary_version(
    client: KmsClient, target: Target
) -> None:
    primary = client.call("DescribeKey", KeyId=target.key_id)["KeyMetadata"]
    sealed = client.call("Encrypt", KeyId=target.key_id, Plaintext="p")
    opened = client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])
    assert sealed["KeyId"] == opened["KeyId"] == primary["KeyId"]
    assert sealed["KeyVersionId"] == opened["KeyVersionId"]
    assert sealed["KeyVersionId"] == primary["PrimaryKeyVersion"]
    assert sealed["RequestId"]
    assert opened["RequestId"] != sealed["RequestId"]


def test_key_id_may_be_an_alias_or_an_arn(
    client: KmsClient, target: Target, new_key: NewKey
) -> None:
    key_id = new_key()
    alias = f"alias/contract-ref-{key_id[:8]}"
    client.call("CreateAlias", AliasName=alias, KeyId=key_id)
    arn = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["Arn"]
    for reference in (alias, arn):
        sealed = client.call("Encrypt", KeyId=reference, Plaintext="p")
        assert sealed["KeyId"] == key_id
    assert client.call("DescribeKey", KeyId=alias)["KeyMetadata"]["KeyId"] == key_id


def test_generate_data_key_plaintext_is_base64_and_its_blob_decrypts_to_it(
    client: KmsClient, target: Target
) -> None:
    context = {"queue": "orders", "tenant": "t-1"}
    data_key = client.call(
        "GenerateDataKey", KeyId=target.key_id, EncryptionContext=context
    )
    assert len(base64.b64decode(data_key["Plaintext"], validate=True)) == 32
    opened = client.call(
        "Decrypt", CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context
    )
    assert opened["Plaintext"] == data_key["Plaintext"]
    assert opened["KeyVersionId"] == data_key["KeyVersionId"]


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({}, 32),
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": 1}, 1),
        ({"NumberOfBytes": 1024}, 1024),
        ({"KeySpec": "AES_128", "NumberOfBytes": 48}, 48),
    ],
    ids=["default", "AES_256", "AES_128", "1-byte", "1024-bytes", "bytes-win"],
)
def test_generate_data_key_size_follows_key_spec_and_number_of_bytes(
    client: KmsClient, target: Target, params: dict[str, object], size: int
) -> None:
    data_key = client.call("GenerateDataKey", KeyId=target.key_id, **params)
    assert len(base64.b64decode(data_key["Plaintext"])) == size


def test_data_keys_are_fresh_on_every_call(client: KmsClient, target: Target) -> None:
    first = client.call("GenerateDataKey", KeyId=target.key_id)
    second = client.call("GenerateDataKey", KeyId=target.key_id)
    assert first["Plaintext"] != second["Plaintext"]
    assert first["CiphertextBlob"] != second["CiphertextBlob"]


def test_generate_data_key_without_plaintext_wraps_a_base64_key(
    client: KmsClient, target: Target
) -> None:
    wrapped = client.call(
        "GenerateDataKeyWithoutPlaintext", KeyId=target.key_id, KeySpec="AES_128"
    )
    assert "Plaintext" not in wrapped
    opened = client.call("Decrypt", CiphertextBlob=wrapped["CiphertextBlob"])
    assert len(base64.b64decode(opened["Plaintext"], validate=True)) == 16


def test_re_encrypt_moves_a_blob_to_another_key_and_context(
    client: KmsClient, target: Target, new_key: NewKey
) -> None:
    destination = new_key()
    sealed = client.call(
        "Encrypt", KeyId=target.key_id, Plaintext="moving", EncryptionContext={"a": "1"}
    )
    moved = client.call(
        "ReEncrypt",
        CiphertextBlob=sealed["CiphertextBlob"],
        SourceEncryptionContext={"a": "1"},
        DestinationKeyId=destination,
        DestinationEncryptionContext={"b": "2"},
    )
    assert moved["KeyId"] == destination
    opened = client.call(
        "Decrypt", CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"b": "2"}
    )
    assert (opened["KeyId"], opened["Plaintext"]) == (destination, "moving")


@pytest.mark.parametrize("reader", FLAVOURS)
def test_a_blob_from_one_client_decrypts_with_every_other(
    client: KmsClient, target: Target, reader: str
) -> None:
    # The old SDK sends the context as the caller's text ({"a": "1", ...} with
    # spaces), the new one as compact JSON: the meaning must match, not the text.
    context = {"b": "2", "a": "1 1"}
    sealed = client.call(
        "Encrypt", KeyId=target.key_id, Plaintext="shared", EncryptionContext=context
    )
    opened = target.client(reader).call(
        "Decrypt",
        CiphertextBlob=sealed["CiphertextBlob"],
        EncryptionContext=dict(reversed(context.items())),
    )
    assert opened["Plaintext"] == "shared"


def test_absent_context_is_the_empty_object(client: KmsClient, target: Target) -> None:
    sealed = client.call("Encrypt", KeyId=target.key_id, Plaintext="p")
    opened = client.call(
        "Decrypt", CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={}
    )
    assert opened["Plaintext"] == "p"


@pytest.mark.parametrize(
    ("sealed_with", "opened_with"),
    [
        ({"a": "1"}, {"a": "2"}),
        ({"a": "1"}, {}),
        ({}, {"a": "1"}),
        ({"a": "1"}, {"a": "1", "b": "2"}),
        ({"ab": "c"}, {"a": "bc"}),  # concatenations alike: must not collide
        ({"a": "b", "c": "d"}, {"a": "bc", "": "d"}),
    ],
    ids=["other-value", "dropped", "added", "extra-pair", "ab-c-vs-a-bc", "shifted"],
)
def test_decrypt_with_another_context_is_rejected(
    client: KmsClient,
    target: Target,
    sealed_with: dict[str, str],
    opened_with: dict[str, str],
) -> None:
    sealed = client.call(
        "Encrypt", KeyId=target.key_id, Plaintext="p", EncryptionContext=sealed_with
    )
    with pytest.raises(KmsCallError) as caught:
        client.call(
            "Decrypt",
            CiphertextBlob=sealed["CiphertextBlob"],
            EncryptionContext=opened_with,
        )
    assert (caught.value.status, caught.value.code) == (400, "InvalidParameter")


@pytest.mark.parametrize("position", [0, 40, -1], ids=["version", "iv", "tag"])
def test_a_tampered_blob_is_rejected(
    client: KmsClient, target: Target, position: int
) -> None:
    sealed = client.call("Encrypt", KeyId=target.key_id, Plaintext="p")
    raw = bytearray(base64.b64decode(sealed["CiphertextBlob"]))
    raw[position] ^= 0x01
    with pytest.raises(KmsCallError) as caught:
        client.call("Decrypt", CiphertextBlob=base64.b64encode(raw).decode())
    assert caught.value.status in (400, 404)
    assert caught.value.code in ("InvalidParameter", "Forbidden.KeyNotFound")


def test_old_blobs_decrypt_after_a_new_version_becomes_primary(
    client: KmsClient, target: Target, new_key: NewKey
) -> None:
    if target.kind == "real":
        pytest.skip("CreateKeyVersion is for asymmetric keys on the real service")
    key_id = new_key()
    before = client.call("Encrypt", KeyId=key_id, Plaintext="old")
    version = client.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]
    after = client.call("Encrypt", KeyId=key_id, Plaintext="new")
    assert after["KeyVersionId"] == version["KeyVersionId"] != before["KeyVersionId"]
    for sealed, text in ((before, "old"), (after, "new")):
        opened = client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])
        assert (opened["Plaintext"], opened["KeyVersionId"]) == (
            text,
            sealed["KeyVersionId"],
        )
