"""The leak detector itself: it must find what it is meant to find."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlencode

import pytest
from leakcheck import RecordingHandler, SecretRegistry, forms_of, scan

pytestmark = pytest.mark.security

HERE = Path(__file__).parent


def test_forms_cover_text_hex_base64_and_bytes_repr() -> None:
    key = bytes(range(200, 232))
    forms = forms_of(key)
    assert key.hex() in forms
    assert base64.b64encode(key).decode().rstrip("=") in forms
    assert base64.urlsafe_b64encode(key).decode().rstrip("=") in forms
    assert repr(key)[2:-1] in forms
    assert "a payload of plain text" in forms_of(b"a payload of plain text")


def test_a_data_key_in_a_query_string_is_found() -> None:
    # '+' and '/' in its base64, written %2B and %2F in a URL.
    key = b"\xfb\xff" * 16
    registry = SecretRegistry()
    registry.add("data key", key)
    query = urlencode({"Action": "Encrypt", "Plaintext": base64.b64encode(key)})
    line = f'https://kms:443 "POST /?{query} HTTP/1.1" 200 0'
    assert [kind for kind, _ in registry.search(line)] == ["data key"]


def test_a_data_key_in_base64_inside_a_json_line_is_found() -> None:
    registry = SecretRegistry()
    key = os.urandom(32)
    registry.add("data key", key)
    line = f'{{"KeyId": "k", "Plaintext": "{base64.b64encode(key).decode()}"}}'
    assert registry.search(line) == [("data key", "text of 43 characters")]
    assert registry.search('{"KeyId": "k"}') == []


def test_per_test_secrets_are_forgotten_and_lasting_ones_kept() -> None:
    registry = SecretRegistry()
    registry.add("payload", b"a payload long enough to search")
    registry.add("access-key secret", "an-access-key-secret-value", lasting=True)
    registry.end_test()
    assert registry.search("a payload long enough to search") == []
    assert registry.search("x an-access-key-secret-value y") == [
        ("access-key secret", "text of 26 characters")
    ]


def test_short_payloads_are_not_searched() -> None:
    registry = SecretRegistry()
    registry.add("payload", b"hello")
    assert registry.search("hello world, hello") == []


def test_exception_causes_are_part_of_the_record_text() -> None:
    import logging

    registry = SecretRegistry()
    registry.add("payload", b"the secret payload in a cause")
    handler = RecordingHandler()
    logger = logging.getLogger("leakcheck-selftest")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("the secret payload in a cause")
        except ValueError as inner:
            raise RuntimeError("outer text") from inner
    except RuntimeError:
        logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    leaks = scan(registry, handler.take())
    assert [leak.kind for leak in leaks] == ["payload"]


CANARY = """
import base64
import logging
import os

from envelope_mq.shared.crypto import Aes256Gcm
from envelope_mq.shared.kms.datakey import DataKey

log = logging.getLogger("canary")


def test_leaks_a_data_key() -> None:
    key = DataKey(os.urandom(32), "wrapped", "key-id")
    log.debug("made %s", base64.b64encode(key.plaintext).decode())


def test_leaks_a_payload_in_an_exception() -> None:
    cipher = Aes256Gcm(os.urandom(32))
    cipher.seal(os.urandom(12), b"plaintext that must stay secret", b"")
    try:
        raise ValueError("cannot handle plaintext that must stay secret")
    except ValueError:
        log.warning("handler failed", exc_info=True)


def test_is_clean() -> None:
    key = DataKey(os.urandom(32), "wrapped", "key-id")
    cipher = Aes256Gcm(key.plaintext)
    cipher.seal(os.urandom(12), b"plaintext that must stay secret", b"")
    log.info("sealed a message of %d bytes", 31)
"""


def test_the_plugin_fails_exactly_the_tests_that_leak(tmp_path: Path) -> None:
    (tmp_path / "test_canary.py").write_text(textwrap.dedent(CANARY))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "leakcheck",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    errors = sorted(
        line.split()[1] for line in out.splitlines() if line.startswith("ERROR ")
    )
    assert errors == [
        "test_canary.py::test_leaks_a_data_key",
        "test_canary.py::test_leaks_a_payload_in_an_exception",
    ], out
    assert "data key (text of 43 characters)" in out
    assert "payload (text of 31 characters)" in out
    # The report names the kind of secret, never the secret.
    # Our report sections, without pytest's own dump of the captured logs.
    reports = [
        part.split("Captured log")[0]
        for part in out.split("secret leaked into the logs:")[1:]
    ]
    assert any("payload" in report for report in reports)
    assert not any("plaintext that must stay secret" in r for r in reports)
