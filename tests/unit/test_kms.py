"""AliyunKms driven over HTTP against a scripted local KMS (no mocks of the SDK)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsCallerError,
    KmsError,
    KmsRequestError,
    KmsUnavailableError,
)
from envelope_mq.shared.kms import AliyunKms, DataKey
from kms_stub_server import Reply, StubKms, error_reply

SECRET = "stub-secret-never-shown"
KEY = os.urandom(32)
BLOB = "ODZhOWVmZDktM2QxNi00ODk0LWJkNGYtMWZjNDNmM2YyYWJmAAAA"
SIG_MISMATCH = (
    "Specified signature is not matched with our calculation. server string to "
    "sign is:POST&%2F&AccessKeyId%3Dstub-ak%26Action%3DDecrypt"
)


def _ok(plaintext: bytes = KEY) -> Reply:
    return Reply(
        200,
        {
            "RequestId": "0f0e",
            "KeyId": "key-resolved-id",
            "KeyVersionId": "v1",
            "CiphertextBlob": BLOB,
            "Plaintext": base64.b64encode(plaintext).decode(),
        },
    )


@pytest.fixture
def stub() -> Iterator[StubKms]:
    server = StubKms()
    yield server
    server.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_kms(stub: StubKms, sleeps: list[float]) -> Callable[..., AliyunKms]:
    def make(**options: Any) -> AliyunKms:
        options.setdefault("endpoint", stub.endpoint)
        options.setdefault("read_timeout", 5.0)
        return AliyunKms(
            "stub-ak", SECRET, "cn-hangzhou", sleep=sleeps.append, **options
        )

    return make


def _refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_generate_data_key_parses_the_response(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(_ok())
    data_key = make_kms().generate_data_key("alias/orders", {"b": "2", "a": "1"})
    assert data_key == DataKey(plaintext=KEY, wrapped=BLOB, key_id="key-resolved-id")
    (seen,) = stub.requests
    assert seen.action == "GenerateDataKey"
    assert seen.params["KeyId"] == "alias/orders"
    assert seen.params["KeySpec"] == "AES_256"
    assert seen.params["EncryptionContext"] == '{"a":"1","b":"2"}'


def test_empty_context_is_not_sent(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(_ok(), _ok())
    kms = make_kms()
    kms.generate_data_key("alias/orders", {})
    kms.decrypt_data_key(BLOB, {})
    assert all("EncryptionContext" not in seen.params for seen in stub.requests)


def test_decrypt_data_key_sends_blob_and_context(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(_ok())
    unwrapped = make_kms().decrypt_data_key(BLOB, {"tenant": "ä"})
    assert unwrapped.plaintext == KEY
    assert unwrapped.key_id == "key-resolved-id"  # KMS's answer, not ours
    (seen,) = stub.requests
    assert seen.action == "Decrypt"
    assert seen.params["CiphertextBlob"] == BLOB
    assert seen.params["EncryptionContext"] == '{"tenant":"ä"}'


def test_no_data_key_or_request_parameter_reaches_a_log_even_at_debug(
    stub: StubKms,
    make_kms: Callable[..., AliyunKms],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_text = "plaintext-of-an-encrypt-call"
    stub.reply(
        _ok(),
        _ok(),
        error_reply(400, "SignatureDoesNotMatch", f"{SIG_MISMATCH}%26{secret_text}"),
    )
    kms = make_kms()
    kms.generate_data_key("alias/orders", {})
    kms.decrypt_data_key(BLOB, {})
    with pytest.raises(KmsRequestError):
        kms.call("Encrypt", {"KeyId": "k", "Plaintext": secret_text})
    logged = caplog.text
    assert base64.b64encode(KEY).decode() not in logged
    assert secret_text not in logged


@pytest.mark.parametrize("where", ["signature mismatch", "connection refused"])
def test_no_request_parameter_reaches_a_printed_traceback(
    stub: StubKms, make_kms: Callable[..., AliyunKms], where: str
) -> None:
    # The SDK's own exceptions quote the string-to-sign or the request URL,
    # every parameter included: the causes we chain must not.
    secret_text = "plaintext-of-an-encrypt-call"
    stub.reply(
        error_reply(400, "SignatureDoesNotMatch", f"{SIG_MISMATCH}%26{secret_text}")
    )
    endpoint = stub.endpoint if where == "signature mismatch" else None
    kms = make_kms(endpoint=endpoint or f"127.0.0.1:{_refused_port()}", max_attempts=1)
    with pytest.raises(KmsError) as caught:
        kms.call("Encrypt", {"KeyId": "k", "Plaintext": secret_text})
    assert type(caught.value.__cause__).__module__.startswith("aliyunsdkcore")
    assert secret_text not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    "plaintext", [b"\x00" * 16, b"\x00" * 33, b""], ids=["16", "33", "empty"]
)
def test_a_data_key_of_the_wrong_size_is_refused(
    stub: StubKms, make_kms: Callable[..., AliyunKms], plaintext: bytes
) -> None:
    stub.reply(_ok(plaintext))
    with pytest.raises(KmsRequestError) as caught:
        make_kms().decrypt_data_key(BLOB, {})
    assert caught.value.code == "EMQ.InvalidDataKey"


def test_a_plaintext_that_is_not_base64_is_refused(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(Reply(200, {"KeyId": "k", "Plaintext": "not base64!"}))
    with pytest.raises(KmsRequestError, match=r"EMQ\.InvalidDataKey"):
        make_kms().decrypt_data_key(BLOB, {})


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy</html>",
        b"[1, 2]",
        {"KeyId": "k", "Plaintext": base64.b64encode(KEY).decode()},
    ],
    ids=["not-json", "not-an-object", "missing-blob"],
)
def test_a_malformed_success_response_is_unavailable(
    stub: StubKms, make_kms: Callable[..., AliyunKms], body: Any
) -> None:
    stub.reply(Reply(200, body))
    with pytest.raises(KmsUnavailableError) as caught:
        make_kms(max_attempts=1).generate_data_key("k", {})
    assert caught.value.code == "EMQ.InvalidResponse"


ERROR_BODIES = [
    (404, "Forbidden.KeyNotFound", "The specified Key is not found.", KmsRequestError),
    (
        409,
        "Rejected.Disabled",
        "The request was rejected because the key state is Disabled.",
        KmsRequestError,
    ),
    (
        400,
        "InvalidParameter",
        'The specified parameter "CiphertextBlob" is not valid.',
        KmsRequestError,
    ),
    # The caller's own fault, whatever the request (shared/kms/faults.py).
    (400, "SignatureDoesNotMatch", SIG_MISMATCH, KmsCallerError),
    (
        404,
        "InvalidAccessKeyId.NotFound",
        "The AccessKey ID provided does not exist in our records.",
        KmsCallerError,
    ),
    (
        400,
        "IncompleteSignature",
        "The request signature does not conform.",
        KmsCallerError,
    ),
    (
        400,
        "InvalidTimeStamp.Expired",
        "Specified time stamp or date value is expired.",
        KmsCallerError,
    ),
    (
        400,
        "InvalidSecurityToken.Expired",
        "Specified SecurityToken is expired.",
        KmsCallerError,
    ),
    # Ambiguous: the consumer's key policy decides (consumer/outcome.py).
    (
        403,
        "Forbidden.NoPermission",
        "This operation is forbidden by permission system.",
        KmsRequestError,
    ),
    # About the key of the message: a publisher could replay an old message
    # under a disabled key, so this must never stop a consumer.
    (
        409,
        "Rejected.PendingDeletion",
        "The request was rejected because the key state is PendingDeletion.",
        KmsRequestError,
    ),
    (
        400,
        "Throttling",
        "Request was denied due to request throttling.",
        KmsUnavailableError,
    ),
    (
        400,
        "Throttling.User",
        "Request was denied due to user flow control.",
        KmsUnavailableError,
    ),
    (429, "Rejected.Throttling", "QPS Limit Exceeded", KmsUnavailableError),
    (
        503,
        "ServiceUnavailable",
        "The request has failed due to a temporary failure.",
        KmsUnavailableError,
    ),
    (500, "InternalFailure", "Internal Failure.", KmsUnavailableError),
]


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    ERROR_BODIES,
    ids=[code for _, code, _, _ in ERROR_BODIES],
)
def test_documented_error_bodies_map_to_the_error_tree(
    stub: StubKms,
    make_kms: Callable[..., AliyunKms],
    status: int,
    code: str,
    message: str,
    expected: type[KmsError],
) -> None:
    reply = error_reply(status, code, message)
    stub.reply(reply)
    with pytest.raises(KmsError) as caught:
        make_kms(max_attempts=1).decrypt_data_key(BLOB, {})
    err = caught.value
    assert type(err) is expected
    assert (err.code, err.http_status) == (code, status)
    assert isinstance(reply.body, dict)
    assert err.request_id == reply.body["RequestId"]
    if expected is KmsCallerError:
        assert isinstance(err, KmsCallerError)
        assert err.cause  # the one line names it
        assert err.cause in str(err)
    assert type(err.__cause__).__module__.startswith("aliyunsdkcore")
    assert code in str(err)


def test_signature_mismatch_text_leaves_out_the_string_to_sign(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(error_reply(400, "SignatureDoesNotMatch", SIG_MISMATCH))
    with pytest.raises(KmsRequestError) as caught:
        make_kms().decrypt_data_key(BLOB, {})
    assert "AccessKeyId" not in str(caught.value)
    assert "stub-ak" not in str(caught.value)
    assert SECRET not in str(caught.value)


def test_connection_refused_is_unavailable_and_retried(
    make_kms: Callable[..., AliyunKms], sleeps: list[float]
) -> None:
    port = _refused_port()
    kms = make_kms(endpoint=f"127.0.0.1:{port}", max_attempts=3)
    with pytest.raises(KmsUnavailableError) as caught:
        kms.generate_data_key("k", {})
    assert caught.value.code == "SDK.ConnectionFailed"
    # The endpoint is named, scheme and port included: a typo shows as one.
    assert f"http://127.0.0.1:{port}" in str(caught.value)
    assert type(caught.value.__cause__).__module__.startswith("aliyunsdkcore")
    assert len(sleeps) == 2
    assert "Signature" not in str(caught.value)


def test_read_timeout_is_unavailable(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(Reply(delay=5.0))
    with pytest.raises(KmsUnavailableError) as caught:
        make_kms(read_timeout=0.2, max_attempts=1).decrypt_data_key(BLOB, {})
    assert caught.value.code == "SDK.ReadTimeout"


def test_transient_errors_are_retried_with_growing_jittered_backoff(
    stub: StubKms, make_kms: Callable[..., AliyunKms], sleeps: list[float]
) -> None:
    stub.reply(
        error_reply(503, "ServiceUnavailable", "busy"),
        error_reply(400, "Throttling", "slow down"),
        error_reply(500, "InternalFailure", "oops"),
        _ok(),
    )
    kms = make_kms(max_attempts=4, backoff=0.1, max_backoff=0.15)
    assert kms.decrypt_data_key(BLOB, {}).plaintext == KEY
    assert len(stub.requests) == 4
    assert len(sleeps) == 3
    for delay, cap in zip(sleeps, [0.1, 0.15, 0.15], strict=True):
        assert 0.0 <= delay <= cap
    nonces = {seen.params["SignatureNonce"] for seen in stub.requests}
    assert len(nonces) == 4


def test_retries_stop_after_max_attempts(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(*[error_reply(503, "ServiceUnavailable", "busy")] * 5)
    with pytest.raises(KmsUnavailableError):
        make_kms(max_attempts=3).generate_data_key("k", {})
    assert len(stub.requests) == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "Forbidden.KeyNotFound"),
        (409, "Rejected.Disabled"),
        (400, "InvalidParameter"),
    ],
)
def test_permanent_errors_are_not_retried(
    stub: StubKms, make_kms: Callable[..., AliyunKms], status: int, code: str
) -> None:
    stub.reply(error_reply(status, code, "no"), _ok())
    with pytest.raises(KmsRequestError):
        make_kms(max_attempts=3).generate_data_key("k", {})
    assert len(stub.requests) == 1


def test_call_sends_any_action_and_returns_the_body(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(Reply(200, {"RequestId": "r", "KeyMetadata": {"KeyId": "k1"}}))
    body = make_kms().call(
        "CreateKey",
        {
            "Description": "orders",
            "EnableAutomaticRotation": True,
            "Tags": [{"TagKey": "a"}],
        },
    )
    assert body == {"RequestId": "r", "KeyMetadata": {"KeyId": "k1"}}
    (seen,) = stub.requests
    assert seen.action == "CreateKey"
    assert seen.params["Version"] == "2016-01-20"
    assert seen.params["EnableAutomaticRotation"] == "true"
    assert json.loads(seen.params["Tags"]) == [{"TagKey": "a"}]


def test_call_maps_errors_like_the_data_key_calls(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(
        error_reply(404, "Forbidden.AliasNotFound", "The specified Alias is not found.")
    )
    with pytest.raises(KmsRequestError) as caught:
        make_kms().call("DescribeKey", {"KeyId": "alias/none"})
    assert caught.value.code == "Forbidden.AliasNotFound"


def test_call_does_not_repeat_a_request_kms_may_have_acted_on(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(error_reply(503, "ServiceUnavailable", "busy"), _ok())
    with pytest.raises(KmsUnavailableError):
        make_kms(max_attempts=3).call("CreateKey", {})
    assert len(stub.requests) == 1


def test_call_repeats_a_throttled_request(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(
        error_reply(400, "Throttling", "slow down"), Reply(200, {"RequestId": "r"})
    )
    assert make_kms(max_attempts=3).call("CreateKey", {}) == {"RequestId": "r"}
    assert len(stub.requests) == 2


@pytest.mark.parametrize("scheme", ["", "http://"])
def test_endpoint_with_or_without_http_reaches_the_stub(
    stub: StubKms, make_kms: Callable[..., AliyunKms], scheme: str
) -> None:
    stub.reply(_ok())
    assert (
        make_kms(endpoint=scheme + stub.endpoint).decrypt_data_key(BLOB, {}).plaintext
        == KEY
    )


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("kms-emulator:8080", "https://kms-emulator:8080"),
        ("localhost:8080", "http://localhost:8080"),
        ("HTTP://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("kms.cn-hangzhou.aliyuncs.com", "https://kms.cn-hangzhou.aliyuncs.com"),
        ("kms.example.com:443", "https://kms.example.com:443"),
        ("https://kms.example.com:8443", "https://kms.example.com:8443"),
    ],
)
def test_endpoint_override_chooses_the_protocol(endpoint: str, shown: str) -> None:
    assert repr(AliyunKms("ak", SECRET, endpoint=endpoint)) == f"AliyunKms({shown})"


@pytest.mark.parametrize(
    "endpoint", ["ftp://host:21", "http://", "http://host:80/path"]
)
def test_a_malformed_endpoint_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        AliyunKms("ak", SECRET, endpoint=endpoint)


def test_from_settings_takes_region_credentials_and_endpoint(stub: StubKms) -> None:
    settings = Settings.from_env(
        {
            "KMS_ENDPOINT": f"http://{stub.endpoint}",
            "ALIBABA_CLOUD_REGION_ID": "cn-shanghai",
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "env-ak",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
        }
    )
    stub.reply(_ok())
    kms = AliyunKms.from_settings(settings)
    assert kms.decrypt_data_key(BLOB, {}).plaintext == KEY
    (seen,) = stub.requests
    assert (seen.params["AccessKeyId"], seen.params["RegionId"]) == (
        "env-ak",
        "cn-shanghai",
    )
    assert SECRET not in repr(kms)


def test_data_key_repr_hides_the_plaintext() -> None:
    data_key = DataKey(plaintext=KEY, wrapped=BLOB, key_id="k")
    assert KEY.hex() not in repr(data_key)
    assert repr(KEY) not in repr(data_key)
    assert "plaintext" not in repr(data_key)


@pytest.mark.parametrize("plaintext", [b"\x01" * 31, b"\x01" * 16, bytearray(32)])
def test_data_key_must_be_32_bytes(plaintext: Any) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(plaintext=plaintext, wrapped=BLOB, key_id="k")


def test_a_decrypt_answer_without_key_id_is_not_trusted(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(Reply(200, {"Plaintext": base64.b64encode(KEY).decode()}))
    with pytest.raises(KmsUnavailableError) as caught:
        make_kms(max_attempts=1).decrypt_data_key(BLOB, {})
    assert caught.value.code == "EMQ.InvalidResponse"


def test_describe_key_id_resolves_an_alias(
    stub: StubKms, make_kms: Callable[..., AliyunKms]
) -> None:
    stub.reply(Reply(200, {"RequestId": "r", "KeyMetadata": {"KeyId": "k1"}}))
    assert make_kms().describe_key_id("alias/orders") == "k1"
    (seen,) = stub.requests
    assert (seen.action, seen.params["KeyId"]) == ("DescribeKey", "alias/orders")


def test_the_regional_endpoint_is_named_when_it_cannot_be_reached() -> None:
    # A region that does not exist: the SDK's endpoint table gives a host that
    # does not resolve, and the error says which.
    kms = AliyunKms("ak", SECRET, "xx-nowhere-9", max_attempts=1, connect_timeout=2)
    with pytest.raises(KmsUnavailableError) as caught:
        kms.generate_data_key("k", {})
    assert "https://kms.xx-nowhere-9.aliyuncs.com:443" in str(caught.value)
