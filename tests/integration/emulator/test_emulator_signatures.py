"""The signature algorithms against the reference vector and the SDKs' own code.

No network: kms_emulator.auth recomputes what aliyun-python-sdk-core and
alibabacloud-tea-openapi compute, on the same inputs.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
from aliyunsdkcore.auth.composer import rpc_signature_composer
from darabonba.request import DaraRequest
from envelope_mq.kms_emulator.auth import (
    NonceCache,
    SignedRequest,
    acs3_string_to_sign,
    v1_signature,
    v1_string_to_sign,
)

# docs/kms-api.md §2, from Alibaba's signature documentation.
DOC_PARAMS = {
    "AccessKeyId": "testid",
    "Action": "CreateKey",
    "Format": "json",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "Timestamp": "2016-03-28T03:13:08Z",
    "Version": "2016-01-20",
}
DOC_STRING_TO_SIGN = (
    "GET&%2F&AccessKeyId%3Dtestid&Action%3DCreateKey&Format%3Djson"
    "&SignatureMethod%3DHMAC-SHA1&SignatureVersion%3D1.0"
    "&Timestamp%3D2016-03-28T03%253A13%253A08Z&Version%3D2016-01-20"
)
ODD_PARAMS = {
    **DOC_PARAMS,
    "Plaintext": "hello world+/=*~ 中",
    "EncryptionContext": '{"a": "b c"}',
    "SignatureType": "",
}


def test_the_reference_vector_signs_to_its_published_signature() -> None:
    assert (
        v1_signature("testsecret", DOC_STRING_TO_SIGN) == "s/OdVWMTmNGagvWlljdAJ7Itsew="
    )


def test_the_reference_parameters_give_the_reference_pairs() -> None:
    # The published StringToSign shows the pairs joined by a raw "&"; the SDKs
    # (and the algorithm's text) encode that "&" too, as %26.
    ours = v1_string_to_sign("GET", DOC_PARAMS)
    assert ours == DOC_STRING_TO_SIGN.replace("&", "%26").replace(
        "%26%2F%26", "&%2F&", 1
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("params", [DOC_PARAMS, ODD_PARAMS], ids=["doc", "odd"])
def test_v1_string_to_sign_matches_the_old_sdk(
    method: str, params: dict[str, str]
) -> None:
    compose = getattr(rpc_signature_composer, "__compose_string_to_sign")
    assert v1_string_to_sign(method, params) == compose(method, dict(params))


def test_acs3_signature_matches_the_new_sdk() -> None:
    query = {"KeyId": "alias/test", "EncryptionContext": '{"a":"b c"}', "Empty": ""}
    headers = {
        "host": "127.0.0.1:8600",
        "x-acs-action": "Encrypt",
        "x-acs-version": "2016-01-20",
        "x-acs-date": "2026-11-29T03:04:00Z",
        "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef",
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
        "accept": "application/json",
    }
    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = dict(query)
    request.headers = dict(headers)
    authorization = TeaUtils.get_authorization(
        request, "ACS3-HMAC-SHA256", headers["x-acs-content-sha256"], "ak", "secret"
    )
    signed = sorted(headers)
    to_sign = acs3_string_to_sign(
        SignedRequest("POST", query, query, headers),
        signed,
        headers["x-acs-content-sha256"],
    )
    ours = hmac.new(b"secret", to_sign.encode(), hashlib.sha256).hexdigest()
    assert authorization.endswith(f"Signature={ours}")
    assert f"SignedHeaders={';'.join(signed)}" in authorization


def test_a_nonce_is_refused_twice_within_the_window() -> None:
    cache = NonceCache(window_seconds=900)
    assert cache.add("n1", signed_at=1000.0, now=1000.0)
    assert not cache.add("n1", signed_at=1000.0, now=1500.0)
    assert cache.add("n2", signed_at=1000.0, now=1500.0)


def test_nonces_are_forgotten_once_their_timestamp_is_out_of_the_window() -> None:
    cache = NonceCache(window_seconds=900)
    for i in range(100):
        cache.add(f"n{i}", signed_at=1000.0, now=1000.0)
    assert len(cache) == 100
    # By then a request stamped 1000.0 is refused as expired anyway.
    cache.add("later", signed_at=3000.0, now=3000.0)
    assert len(cache) == 1
