"""Random actions and parameter maps: every outcome is a dict or an ApiError."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from envelope_mq.kms_emulator.actions import ACTIONS
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.service import KmsService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "0b6c2b7e-2a8e-4f5f-9a3e-3a1c0c4f9d21"
VICTIM = "1c7d3c8f-3b9f-4a6a-8b4f-4b2d1d5a0e32"
PAGING = ("PageNumber", "PageSize")
CONTEXT = ("EncryptionContext", "DryRun")
OPTIONAL: dict[str, tuple[str, ...]] = {
    "Encrypt": CONTEXT,
    "Decrypt": (*CONTEXT, "Recipient"),
    "GenerateDataKey": (*CONTEXT, "KeySpec", "NumberOfBytes", "Recipient"),
    "GenerateDataKeyWithoutPlaintext": (*CONTEXT, "KeySpec", "NumberOfBytes"),
    "ReEncrypt": (
        "SourceEncryptionContext", "DestinationEncryptionContext", "SourceKeyId",
        "SourceKeyVersionId", "SourceEncryptionAlgorithm", "DryRun",
    ),
    "CreateKey": (
        "Description", "KeyUsage", "KeySpec", "Origin", "ProtectionLevel",
        "EnableAutomaticRotation", "RotationInterval", "Tags",
    ),
    "ListKeys": (*PAGING, "Filters"),
    "ListAliases": PAGING,
    "ListAliasesByKeyId": PAGING,
    "ListKeyVersions": PAGING,
}  # fmt: skip
PARAM_NAMES = sorted(
    {"KeyId", "CiphertextBlob", "DestinationKeyId", "AliasName", "KeyVersionId"}
    | {"PendingWindowInDays", "Description", "EnableAutomaticRotation"}
    | {"RotationInterval"}
    | {name for names in OPTIONAL.values() for name in names}
)
# Awkward characters (lone surrogates, NUL, JSON and URL syntax), then any at all.
NASTY = st.sampled_from([*'\udcff\ud800\x00\n"\\{}[]:,/+=%é中🔑 ', "a", "0", "-"])
ANY_TEXT = st.one_of(
    st.text(NASTY, max_size=20),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
)


@pytest.fixture(scope="module")
def kms() -> Iterator[KmsService]:
    keys = [
        {"key_id": KEY, "aliases": ["alias/f"]},
        {"key_id": VICTIM, "aliases": ["alias/v"]},
    ]
    service = KmsService.open(seed={"keys": keys})
    yield service
    service.close()


@pytest.fixture(scope="module")
def blob(kms: KmsService) -> str:
    body = kms.call("Encrypt", {"KeyId": KEY, "Plaintext": "p"}, None)
    return str(body["CiphertextBlob"])


def values(blob: str) -> st.SearchStrategy[str]:
    """Plausible values (valid ids, JSON, numbers, bad text) or any text."""
    plausible = st.sampled_from(
        [
            KEY, "alias/f", "alias/new", f"acs:kms:cn-hangzhou:123:key/{KEY}",
            blob, blob[:-4], "{}", '{"a":"b"}', '{"a":1}', "[]", "true", "False", "0",
            "7", "32", "1024", "-1", "AES_128", "Aliyun_AES_128", "EXTERNAL", "7d",
            '[{"Key":"KeyState","Values":["Enabled"]}]', "", "\udcff", '{"\ud800":"x"}',
            "x" * 9000,
        ]
    )  # fmt: skip
    return st.one_of(plausible, ANY_TEXT)


def valid_request(action: str, blob: str) -> dict[str, str]:
    """A request ``action`` accepts; destructive ones aim at a second key."""
    version = base64.b64decode(blob)[:36].decode("ascii")
    on_key = {"KeyId": KEY}
    on_victim = {"KeyId": VICTIM}
    return {
        "Encrypt": {**on_key, "Plaintext": "p"},
        "Decrypt": {"CiphertextBlob": blob},
        "GenerateDataKey": on_key,
        "GenerateDataKeyWithoutPlaintext": on_key,
        "ReEncrypt": {"CiphertextBlob": blob, "DestinationKeyId": KEY},
        "DescribeKey": on_key,
        "ListKeyVersions": on_key,
        "ListAliasesByKeyId": on_key,
        "CreateKeyVersion": on_key,
        "DescribeKeyVersion": {**on_key, "KeyVersionId": version},
        "CreateAlias": {**on_key, "AliasName": "alias/new"},
        "UpdateAlias": {**on_key, "AliasName": "alias/f"},
        "DeleteAlias": {"AliasName": "alias/v"},
        "EnableKey": on_victim,
        "DisableKey": on_victim,
        "CancelKeyDeletion": on_victim,
        "ScheduleKeyDeletion": {**on_victim, "PendingWindowInDays": "7"},
        "UpdateKeyDescription": {**on_victim, "Description": "d"},
        "UpdateRotationPolicy": {
            **on_victim,
            "EnableAutomaticRotation": "true",
            "RotationInterval": "7d",
        },
    }.get(action, {})


def check(kms: KmsService, action: str, params: dict[str, str]) -> None:
    outcome: object
    try:
        outcome = kms.call(action, params, None)
    except ApiError as exc:  # any other exception fails the test
        outcome = exc
    if isinstance(outcome, ApiError):
        assert 400 <= outcome.status < 500
        assert outcome.code
        assert outcome.message
    else:
        assert isinstance(outcome, dict)


FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_random_calls_answer_a_dict_or_an_api_error(
    kms: KmsService, blob: str, data: st.DataObject
) -> None:
    action = data.draw(st.one_of(st.sampled_from(sorted(ACTIONS)), ANY_TEXT))
    names = st.one_of(st.sampled_from(PARAM_NAMES), ANY_TEXT)
    check(kms, action, data.draw(st.dictionaries(names, values(blob), max_size=6)))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_mutated_valid_requests_answer_a_dict_or_an_api_error(
    kms: KmsService, blob: str, action: str, data: st.DataObject
) -> None:
    params = valid_request(action, blob)
    names = sorted({*params, *OPTIONAL.get(action, ())}) or PARAM_NAMES
    dropped = data.draw(st.sets(st.sampled_from(names), max_size=1))
    params = {k: v for k, v in params.items() if k not in dropped}
    changes = st.dictionaries(st.sampled_from(names), values(blob), max_size=3)
    params.update(data.draw(changes))
    check(kms, action, params)
