"""Emulator only: random parameter maps, bodies and headers over raw HTTP.

Every answer must be a well-formed JSON success or API error with a RequestId,
never a 500 or a traceback, and always within the socket timeout (no hang).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.kms_emulator.actions import ACTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kms_clients import (
    Credentials,
    RawHttp,
    RawResponse,
    admin_seed,
    v1_signed_params,
)

pytestmark = pytest.mark.integration

AK = Credentials("fuzz-ak", "fuzz-secret")
KEY_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SEED = admin_seed(AK, KEY_ID, "alias/fuzz")
PARAM_NAMES = [
    "KeyId", "Plaintext", "CiphertextBlob", "EncryptionContext", "KeySpec",
    "NumberOfBytes", "DestinationKeyId", "SourceEncryptionContext",
    "DestinationEncryptionContext", "SourceKeyId", "SourceKeyVersionId",
    "Description", "KeyUsage", "Origin", "ProtectionLevel", "EnableAutomaticRotation",
    "RotationInterval", "Tags", "PageNumber", "PageSize", "Filters", "AliasName",
    "KeyVersionId", "PendingWindowInDays", "DryRun", "Recipient",
]  # fmt: skip
FUZZ = settings(
    max_examples=120,
    deadline=None,  # a shared 2-core machine: timing is not what is tested
    suppress_health_check=[HealthCheck.too_slow],
)
ALLOWED_STATUSES = {200, 400, 403, 404, 405, 409, 411, 413, 414, 431}

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            KEY_ID,
            "alias/fuzz",
            "alias/nope",
            "True",
            "false",
            "0",
            "-1",
            "1025",
            "7d",
            "{}",
            '{"a":"b"}',
            '{"a":1}',
            "[]",
            "[{}]",
            "null",
            "eA==",
            "AES_128",
            "Aliyun_AES_256",
            "EXTERNAL",
            "x" * 7000,
            '{"' + "k" * 9000 + '":"v"}',
        ]
    ),
)
param_maps = st.dictionaries(
    st.one_of(st.sampled_from(PARAM_NAMES), st.text(min_size=1, max_size=12)),
    values,
    max_size=6,
)
actions = st.one_of(st.sampled_from(sorted(ACTIONS)), st.text(max_size=20))


def _well_formed(response: RawResponse) -> dict[str, object]:
    assert response.status in ALLOWED_STATUSES, response.body[:300]
    assert response.headers["content-type"] == "application/json;charset=utf-8"
    assert b"Traceback" not in response.body
    body = json.loads(response.body)
    assert isinstance(body, dict)
    assert isinstance(body["RequestId"], str)
    if response.status != 200:
        assert isinstance(body["Code"], str)
        assert isinstance(body["Message"], str)
    return body


@pytest.fixture(scope="module")
def open_emulator() -> Iterator[Emulator]:
    with Emulator(seed=SEED, auth="off", admin=False) as emu:
        yield emu


@pytest.fixture(scope="module")
def strict_emulator() -> Iterator[Emulator]:
    with Emulator(seed=SEED, auth="strict", admin=False) as emu:
        yield emu


@pytest.fixture(scope="module")
def open_http(open_emulator: Emulator) -> Iterator[RawHttp]:
    connection = RawHttp(open_emulator.endpoint, timeout=10)
    yield connection
    connection.close()


@FUZZ
@given(action=actions, params=param_maps, as_form=st.booleans())
def test_random_parameters_get_a_well_formed_answer(
    open_emulator: Emulator, action: str, params: dict[str, str], as_form: bool
) -> None:
    everything = {"Action": action, "Version": "2016-01-20", **params}
    connection = RawHttp(open_emulator.endpoint, timeout=10)
    try:
        if as_form:
            body = urlencode(everything, quote_via=quote).encode()
            response = connection.send(
                "POST",
                "/",
                body=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            response = connection.send(
                "GET", "/?" + urlencode(everything, quote_via=quote)
            )
    finally:
        connection.close()
    _well_formed(response)


@FUZZ
@given(action=st.sampled_from(sorted(ACTIONS)), params=param_maps)
def test_random_signed_requests_get_a_well_formed_answer(
    strict_emulator: Emulator, action: str, params: dict[str, str]
) -> None:
    signed = v1_signed_params(action, params, AK)
    connection = RawHttp(strict_emulator.endpoint, timeout=10)
    try:
        response = connection.send("POST", "/?" + urlencode(signed, quote_via=quote))
    finally:
        connection.close()
    _well_formed(response)


@FUZZ
@given(
    query=st.binary(max_size=200),
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "", "text/plain"]
    ),
    authorization=st.one_of(
        st.just(""),
        st.text(
            alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80
        ),
        st.builds(
            lambda s: "ACS3-HMAC-SHA256 " + s,
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),
        ),
    ),
)
def test_random_bytes_get_a_well_formed_answer(
    strict_emulator: Emulator,
    query: bytes,
    body: bytes,
    content_type: str,
    authorization: str,
) -> None:
    # Every byte percent-escaped, "&" and "=" kept: invalid UTF-8 and odd pairs.
    target = "/?" + "".join(chr(b) if chr(b) in "&=" else f"%{b:02X}" for b in query)
    headers = {"Content-Type": content_type}
    if authorization:
        headers["Authorization"] = authorization
    connection = RawHttp(strict_emulator.endpoint, timeout=10)
    try:
        response = connection.send("POST", target, body=body, headers=headers)
    finally:
        connection.close()
    _well_formed(response)


@FUZZ
@given(params=param_maps)
def test_keep_alive_survives_a_stream_of_random_requests(
    open_http: RawHttp, params: dict[str, str]
) -> None:
    everything = {"Action": "Encrypt", "Version": "2016-01-20", **params}
    _well_formed(open_http.send("GET", "/?" + urlencode(everything, quote_via=quote)))
