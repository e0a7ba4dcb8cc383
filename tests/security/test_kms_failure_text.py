"""A failed KMS call leaves no data key anywhere in the exception it raises.

The SDKs' own exceptions quote the request URL (Encrypt's Plaintext is a data
key) and the service's messages (SignatureDoesNotMatch echoes its string to
sign, every parameter). The clients translate them into ours: here every
exception reachable from the one raised, through ``__cause__`` and
``__context__`` alike (what a traceback shows, and what anything else walking
the chain sees), is searched for the key, for both SDKs and three failures:
nothing listening, a wrong secret, and an Encrypt the principal may not make.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Iterator

import pytest
from envelope_mq.shared.errors import KmsError
from envelope_mq.shared.kms import AliyunKms, Credentials, DedicatedKms
from leakcheck import forms_of
from regions_kit import Region, new_principals, region_emulator

pytestmark = [pytest.mark.security, pytest.mark.integration]

CONTEXT = {"queue": "orders"}


def _graph(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def _nowhere() -> str:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{free.getsockname()[1]}"


@pytest.fixture(scope="module")
def region() -> Iterator[Region]:
    principals = new_principals()
    with region_emulator("cn-hangzhou", principals, tls=True) as running:
        running.principals = principals  # type: ignore[attr-defined]
        yield running


@pytest.mark.parametrize("sdk", ["old", "new"])
@pytest.mark.parametrize("failure", ["nothing listens", "wrong secret", "not allowed"])
def test_no_data_key_in_any_exception_of_a_failed_encrypt(
    region: Region, sdk: str, failure: str
) -> None:
    principals = region.principals  # type: ignore[attr-defined]
    who = principals.consumer if failure == "not allowed" else principals.producer
    secret = "not-the-secret" if failure == "wrong secret" else who.access_key_secret
    credentials = Credentials.static(who.access_key_id, secret)
    endpoint = _nowhere() if failure == "nothing listens" else region.endpoint
    client: AliyunKms | DedicatedKms
    if sdk == "old":
        client = AliyunKms(
            credentials=credentials,
            endpoint=endpoint,
            ca_bundle=region.ca_file,
            max_attempts=1,
        )
    else:
        client = DedicatedKms(
            endpoint, credentials, ca_file=region.ca_file, max_attempts=1
        )
    key = os.urandom(32)
    with pytest.raises(KmsError) as caught:
        client.wrap_data_key(region.key_id, key, CONTEXT)
    texts = [f"{exc!s} {exc!r} {exc.args!r}" for exc in _graph(caught.value)] + [
        "".join(traceback.format_exception(caught.value))
    ]
    # A count, never the forms themselves: a failure must not print the key.
    leaked = len({f for f in forms_of(key) for text in texts if f in text})
    assert leaked == 0, "forms of the data key in the exceptions"
