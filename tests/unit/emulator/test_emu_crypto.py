"""Encrypt, Decrypt, GenerateDataKey(WithoutPlaintext), ReEncrypt and the blob."""

from __future__ import annotations

import base64
import json
import re

import pytest
from emu_helpers import blob_bytes, call, error_of, new_key, with_byte_flipped
from envelope_mq.kms_emulator.service import KmsService

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def primary_version(kms: KmsService, key_id: str) -> str:
    meta = call(kms, "DescribeKey", KeyId=key_id)["KeyMetadata"]
    return str(meta["PrimaryKeyVersion"])


def test_encrypt_answers_key_version_and_blob(kms: KmsService, key_id: str) -> None:
    body = call(kms, "Encrypt", KeyId=key_id, Plaintext="aGVsbG8=")
    assert set(body) == {"KeyId", "KeyVersionId", "CiphertextBlob"}
    assert body["KeyId"] == key_id
    assert body["KeyVersionId"] == primary_version(kms, key_id)


def test_blob_starts_with_the_key_version_id_then_iv_and_gcm(
    kms: KmsService, key_id: str
) -> None:
    body = call(kms, "Encrypt", KeyId=key_id, Plaintext="abc")
    raw = blob_bytes(body["CiphertextBlob"])
    assert raw[:36].decode("ascii") == body["KeyVersionId"]
    assert len(raw) == 36 + 12 + len(b"abc") + 16


@pytest.mark.parametrize(
    "plaintext",
    ["aGVsbG8=", "not base64 at all", "hello world+/=*~ 中文", "x" * 6144, "🔑\n\t\"'"],
)
def test_decrypt_returns_the_plaintext_string_exactly(
    kms: KmsService, key_id: str, plaintext: str
) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext=plaintext)["CiphertextBlob"]
    body = call(kms, "Decrypt", CiphertextBlob=blob)
    assert body == {
        "KeyId": key_id,
        "KeyVersionId": primary_version(kms, key_id),
        "Plaintext": plaintext,
    }


def test_plaintext_over_6_kb_is_rejected(kms: KmsService, key_id: str) -> None:
    exc = error_of(kms, "Encrypt", KeyId=key_id, Plaintext="é" * 3073)
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert "Plaintext" in exc.message


def test_missing_plaintext_is_missing_parameter(kms: KmsService, key_id: str) -> None:
    exc = error_of(kms, "Encrypt", KeyId=key_id)
    assert (exc.status, exc.code) == (400, "MissingParameter")
    assert '"Plaintext"' in exc.message


def test_plaintext_that_is_not_unicode_text_is_invalid(
    kms: KmsService, key_id: str
) -> None:
    exc = error_of(kms, "Encrypt", KeyId=key_id, Plaintext="bad \udcff")
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_generate_data_key_blob_decrypts_to_its_base64_plaintext(
    kms: KmsService, key_id: str
) -> None:
    body = call(kms, "GenerateDataKey", KeyId=key_id, EncryptionContext='{"q":"x"}')
    assert set(body) == {"KeyId", "KeyVersionId", "CiphertextBlob", "Plaintext"}
    assert len(base64.b64decode(body["Plaintext"], validate=True)) == 32
    opened = call(
        kms,
        "Decrypt",
        CiphertextBlob=body["CiphertextBlob"],
        EncryptionContext='{"q":"x"}',
    )
    assert opened["Plaintext"] == body["Plaintext"]
    assert opened["KeyVersionId"] == body["KeyVersionId"]


def test_generate_data_key_gives_a_new_key_each_time(
    kms: KmsService, key_id: str
) -> None:
    first = call(kms, "GenerateDataKey", KeyId=key_id)["Plaintext"]
    second = call(kms, "GenerateDataKey", KeyId=key_id)["Plaintext"]
    assert first != second


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({}, 32),
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": "1"}, 1),
        ({"NumberOfBytes": "1024"}, 1024),
        ({"KeySpec": "AES_128", "NumberOfBytes": "48"}, 48),
    ],
)
def test_data_key_size_follows_key_spec_and_number_of_bytes(
    kms: KmsService, key_id: str, params: dict[str, str], size: int
) -> None:
    body = kms.call("GenerateDataKey", {"KeyId": key_id, **params}, None)
    assert len(base64.b64decode(body["Plaintext"])) == size


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NumberOfBytes", "0"),
        ("NumberOfBytes", "1025"),
        ("NumberOfBytes", "-1"),
        ("NumberOfBytes", "32.0"),
        ("NumberOfBytes", "thirty"),
        ("KeySpec", "AES_192"),
        ("KeySpec", "Aliyun_AES_256"),
    ],
)
def test_bad_data_key_sizes_are_invalid_parameter(
    kms: KmsService, key_id: str, name: str, value: str
) -> None:
    exc = error_of(kms, "GenerateDataKey", KeyId=key_id, **{name: value})
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert name in exc.message


def test_generate_data_key_without_plaintext_omits_plaintext(
    kms: KmsService, key_id: str
) -> None:
    body = call(
        kms, "GenerateDataKeyWithoutPlaintext", KeyId=key_id, NumberOfBytes="16"
    )
    assert set(body) == {"KeyId", "KeyVersionId", "CiphertextBlob"}
    opened = call(kms, "Decrypt", CiphertextBlob=body["CiphertextBlob"])
    assert len(base64.b64decode(opened["Plaintext"], validate=True)) == 16


@pytest.mark.parametrize(
    "equivalent",
    [
        '{"b": "2", "a": "1"}',
        '{\n  "a" : "1",\n  "b" : "2"\n}',
        '{"a":"\\u0031","b":"2"}',
    ],
)
def test_context_is_matched_by_meaning(
    kms: KmsService, key_id: str, equivalent: str
) -> None:
    blob = call(
        kms,
        "Encrypt",
        KeyId=key_id,
        Plaintext="p",
        EncryptionContext='{"a":"1","b":"2"}',
    )["CiphertextBlob"]
    body = call(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext=equivalent)
    assert body["Plaintext"] == "p"


def test_absent_context_equals_empty_object(kms: KmsService, key_id: str) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    assert call(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext="{}")
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext=" {} ")[
        "CiphertextBlob"
    ]
    assert call(kms, "Decrypt", CiphertextBlob=blob)["Plaintext"] == "p"


@pytest.mark.parametrize(
    ("sealed_with", "opened_with"),
    [
        ('{"ab":"c"}', '{"a":"bc"}'),
        ('{"a":"b","c":"d"}', '{"a":"bc","":"d"}'),
        ('{"a":"1"}', '{"a":"2"}'),
        ('{"a":"1"}', '{"a":"1","b":"2"}'),
        ('{"a":"1"}', "{}"),
        ("{}", '{"a":"1"}'),
        ('{"a":""}', "{}"),
    ],
)
def test_a_different_context_does_not_decrypt(
    kms: KmsService, key_id: str, sealed_with: str, opened_with: str
) -> None:
    blob = call(
        kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext=sealed_with
    )["CiphertextBlob"]
    exc = error_of(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext=opened_with)
    assert (exc.status, exc.code) == (400, "InvalidParameter")


@pytest.mark.parametrize(
    "context",
    [
        "[]",
        '["a","b"]',
        '{"a":1}',
        '{"a":null}',
        '{"a":["b"]}',
        '{"a":{"b":"c"}}',
        '"text"',
        "not json",
        '{"a":"1","a":"2"}',
        "[" * 5000 + "]" * 5000,
        json.dumps({"k": "v" * 8200}),
    ],
)
def test_malformed_context_is_invalid_parameter(
    kms: KmsService, key_id: str, context: str
) -> None:
    exc = error_of(
        kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext=context
    )
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    assert "EncryptionContext" in exc.message


def test_context_of_exactly_8192_characters_is_accepted(
    kms: KmsService, key_id: str
) -> None:
    context = json.dumps({"k": "v" * (8192 - len('{"k": ""}'))})
    assert len(context) == 8192
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext=context)[
        "CiphertextBlob"
    ]
    assert call(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext=context)


@pytest.mark.parametrize(
    "blob",
    [
        "",
        "not base64!",
        "YWJj",  # too short
        base64.b64encode(b"\xff" * 80).decode(),
        base64.b64encode(b"0" * 36 + b"\x00" * 40).decode(),
        base64.b64encode(
            b"6e3a7d8c-0000-4000-8000-000000000000" + b"\x00" * 40
        ).decode(),
        "Zm9v\u00e9",
    ],
)
def test_foreign_or_corrupt_blob_is_a_400(
    kms: KmsService, key_id: str, blob: str
) -> None:
    exc = error_of(kms, "Decrypt", CiphertextBlob=blob)
    assert exc.status == 400
    assert exc.code in ("InvalidParameter", "MissingParameter")


@pytest.mark.parametrize("index", [0, 40, 60, -1])
def test_tampered_blob_is_rejected(kms: KmsService, key_id: str, index: int) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="secret")["CiphertextBlob"]
    exc = error_of(kms, "Decrypt", CiphertextBlob=with_byte_flipped(blob, index))
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_blob_with_the_header_of_another_version_is_rejected(
    kms: KmsService, key_id: str
) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="secret")["CiphertextBlob"]
    other = new_key(kms)
    other_version = primary_version(kms, other).encode("ascii")
    forged = base64.b64encode(other_version + blob_bytes(blob)[36:]).decode()
    exc = error_of(kms, "Decrypt", CiphertextBlob=forged)
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_error_messages_never_echo_plaintext_or_blob(
    kms: KmsService, key_id: str
) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="TOPSECRET")["CiphertextBlob"]
    exc = error_of(kms, "Decrypt", CiphertextBlob=blob, EncryptionContext='{"x":"y"}')
    assert "TOPSECRET" not in str(exc)
    assert blob not in str(exc)


def test_re_encrypt_moves_a_blob_to_the_destination_key(
    kms: KmsService, key_id: str
) -> None:
    destination = new_key(kms)
    blob = call(
        kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext='{"s":"1"}'
    )["CiphertextBlob"]
    body = call(
        kms,
        "ReEncrypt",
        CiphertextBlob=blob,
        DestinationKeyId=destination,
        SourceEncryptionContext='{"s":"1"}',
        DestinationEncryptionContext='{"d":"2"}',
    )
    assert set(body) == {"KeyId", "KeyVersionId", "CiphertextBlob"}
    assert body["KeyId"] == destination
    assert body["KeyVersionId"] == primary_version(kms, destination)
    opened = call(
        kms,
        "Decrypt",
        CiphertextBlob=body["CiphertextBlob"],
        EncryptionContext='{"d":"2"}',
    )
    assert (opened["KeyId"], opened["Plaintext"]) == (destination, "p")


def test_re_encrypt_needs_the_source_context(kms: KmsService, key_id: str) -> None:
    blob = call(
        kms, "Encrypt", KeyId=key_id, Plaintext="p", EncryptionContext='{"s":"1"}'
    )["CiphertextBlob"]
    exc = error_of(kms, "ReEncrypt", CiphertextBlob=blob, DestinationKeyId=key_id)
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_re_encrypt_checks_a_given_source_key(kms: KmsService, key_id: str) -> None:
    other = new_key(kms)
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    exc = error_of(
        kms, "ReEncrypt", CiphertextBlob=blob, DestinationKeyId=other, SourceKeyId=other
    )
    assert (exc.status, exc.code) == (400, "InvalidParameter")
    body = call(
        kms,
        "ReEncrypt",
        CiphertextBlob=blob,
        DestinationKeyId=other,
        SourceKeyId=key_id,
    )
    assert body["KeyId"] == other


def test_re_encrypt_of_an_asymmetric_source_is_unsupported(
    kms: KmsService, key_id: str
) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    exc = error_of(
        kms,
        "ReEncrypt",
        CiphertextBlob=blob,
        DestinationKeyId=key_id,
        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    assert (exc.status, exc.code) == (400, "Rejected.UnsupportedOperation")


@pytest.mark.parametrize(
    "action", ["Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"]
)
def test_dry_run_checks_then_answers_dry_run_error(
    kms: KmsService, key_id: str, action: str
) -> None:
    exc = error_of(kms, action, KeyId=key_id, Plaintext="p", DryRun="True")
    assert (exc.status, exc.code) == (400, "DryRunOperationError")
    # DryRun=false is an ordinary call
    assert kms.call(
        action, {"KeyId": key_id, "Plaintext": "p", "DryRun": "false"}, None
    )


def test_dry_run_value_must_be_a_boolean(kms: KmsService, key_id: str) -> None:
    exc = error_of(kms, "Encrypt", KeyId=key_id, Plaintext="p", DryRun="yes")
    assert (exc.status, exc.code) == (400, "InvalidParameter")


def test_key_id_forms_all_reach_the_same_key(kms: KmsService, key_id: str) -> None:
    call(kms, "CreateAlias", AliasName="alias/forms", KeyId=key_id)
    arn = f"acs:kms:cn-hangzhou:1234567890123456:key/{key_id}"
    alias_arn = "acs:kms:cn-hangzhou:1234567890123456:alias/forms"
    for ref in (key_id, "alias/forms", arn, alias_arn):
        assert call(kms, "Encrypt", KeyId=ref, Plaintext="p")["KeyId"] == key_id


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        ("00000000-0000-4000-8000-000000000000", "Forbidden.KeyNotFound"),
        ("alias/nothing", "Forbidden.AliasNotFound"),
        ("acs:kms:cn-shanghai:1234567890123456:key/x", "Forbidden.KeyNotFound"),
        (
            "acs:kms:cn-hangzhou:1234567890123456:alias/nothing",
            "Forbidden.AliasNotFound",
        ),
        ("acs:kms:cn-hangzhou:1234567890123456:secret/x", "Forbidden.KeyNotFound"),
    ],
)
def test_unknown_keys_are_404(kms: KmsService, ref: str, code: str) -> None:
    exc = error_of(kms, "Encrypt", KeyId=ref, Plaintext="p")
    assert (exc.status, exc.code) == (404, code)


def test_decrypt_of_an_enclave_recipient_is_unsupported(
    kms: KmsService, key_id: str
) -> None:
    blob = call(kms, "Encrypt", KeyId=key_id, Plaintext="p")["CiphertextBlob"]
    exc = error_of(kms, "Decrypt", CiphertextBlob=blob, Recipient='{"x":"y"}')
    assert (exc.status, exc.code) == (400, "Rejected.UnsupportedOperation")
    assert UUID.fullmatch(call(kms, "Decrypt", CiphertextBlob=blob)["KeyVersionId"])
