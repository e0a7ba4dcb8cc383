"""The KMS SDKs' own logging never shows a data key, every logger at DEBUG.

A KMS request carries a data key in its query (Encrypt's Plaintext, the copies
wrapped for other regions) and GenerateDataKey's and Decrypt's answers carry one
in their body. The loggers that can see them: aliyunsdkcore's (its client logs
every parameter and every response body, its HTTP layer the request URL under
DEBUG=sdk, its vendored urllib3 the request line and URLs in errors), Tea's
``alibabacloud-tea`` and darabonba's ``darabonba-core`` (the request line under
DEBUG=sdk, through a stderr handler of their own) and urllib3's (request lines,
retries and redirects with their URL).

A child process drives GenerateDataKey, Encrypt and Decrypt through both SDKs
against the real emulator, and Encrypt against a port where nothing answers,
with the SDKs' debug switch on (DEBUG=sdk) and logging at DEBUG in two ways:
ours (``configure_logging`` in debug) and an application's own (``dictConfig``
after the clients exist, which re-enables every logger, then every logger set
to DEBUG). Everything any logger or handler writes ends on its stderr, which
must hold no data key in any form: hex, base64 (standard, URL-safe, percent-
encoded as in a query) or the escaped bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from envelope_mq.shared.errors import KmsUnavailableError
from envelope_mq.shared.kms import Credentials
from leakcheck import forms_of
from regions_kit import new_principals, region_emulator

pytestmark = [pytest.mark.security, pytest.mark.integration]

CHILD = r"""
import json, logging, logging.config, socket, sys
from envelope_mq.shared.kms import AliyunKms, Credentials, DedicatedKms
from envelope_mq.shared.errors import KmsUnavailableError
from envelope_mq.shared.observability.logs import configure_logging

mode, endpoint, ca_file, key_id, producer, consumer = sys.argv[1:7]
writer, reader = (Credentials.static(*pair.split(":")) for pair in (producer, consumer))
context = {"queue": "orders"}
old = AliyunKms(credentials=writer, endpoint=endpoint, ca_bundle=ca_file)
new = DedicatedKms(endpoint, writer, ca_file=ca_file)
readers = (
    AliyunKms(credentials=reader, endpoint=endpoint, ca_bundle=ca_file),
    DedicatedKms(endpoint, reader, ca_file=ca_file),
)
with socket.socket() as free:
    free.bind(("127.0.0.1", 0))
    nowhere = "https://127.0.0.1:%d" % free.getsockname()[1]
dead = (
    AliyunKms(credentials=writer, endpoint=nowhere, max_attempts=1),
    DedicatedKms(nowhere, writer, max_attempts=1),
)

if mode == "ours":
    configure_logging("text", "debug", stream=sys.stderr)
else:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(name)s %(levelname)s %(message)s"}},
        "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "f"}},
        "root": {"level": "DEBUG", "handlers": ["err"]},
    })
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(logging.DEBUG)
            logger.disabled = False

keys = []
for writing, reading in zip((old, new), readers):
    made = writing.generate_data_key(key_id, context)
    _, copy = writing.wrap_data_key(key_id, made.plaintext, context)
    keys.append(made.plaintext)
    for blob in (made.wrapped, copy):
        assert reading.decrypt_data_key(blob, context).plaintext == made.plaintext
    for client in dead:
        try:
            client.wrap_data_key(key_id, made.plaintext, context)
        except KmsUnavailableError:
            logging.getLogger("app").exception("wrap failed")
print(json.dumps([key.hex() for key in keys]))
"""


@pytest.mark.parametrize("logging_by", ["ours", "the application"])
def test_no_data_key_reaches_any_log_with_every_logger_at_debug(
    logging_by: str,
) -> None:
    principals = new_principals()
    with region_emulator("cn-hangzhou", principals, tls=True) as region:
        assert region.ca_file is not None
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                "ours" if logging_by == "ours" else "app",
                region.endpoint,
                region.ca_file,
                region.key_id,
                *(
                    f"{who.access_key_id}:{who.access_key_secret}"
                    for who in (principals.producer, principals.consumer)
                ),
            ],
            env={**os.environ, "DEBUG": "sdk"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # Both SDKs were driven: two Encrypts answered, two more refused at once.
        assert region.requests("Encrypt") == 2
        assert region.requests("Decrypt") == 4
    keys = [bytes.fromhex(k) for k in json.loads(done.stdout.splitlines()[-1])]
    assert len(set(keys)) == 2
    # The logs were on: urllib3's request lines (query cut) and the failures.
    assert "POST /?<query hidden>" in done.stderr
    assert "wrap failed" in done.stderr
    leaks = [
        line.replace(form, "<data key>")[:200]
        for line in done.stderr.splitlines()
        for key in keys
        for form in forms_of(key)
        if form in line
    ]
    assert leaks == []


def test_an_unreachable_sts_leaves_the_oidc_token_out_of_the_credentials_log(
    tmp_path: Path,
) -> None:
    # alibabacloud-credentials sends the OIDC token (a bearer credential) in
    # the AssumeRoleWithOIDC query, and logs a failed refresh at WARNING and
    # ERROR with the exception, whose text quotes that URL. An application
    # logging at WARNING without our configure_logging lets them through.
    token = "oidc-token-" + uuid.uuid4().hex
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{free.getsockname()[1]}"
    credentials = Credentials.oidc(
        "acs:ram::1:role/r",
        "acs:ram::1:oidc-provider/p",
        str(token_file),
        sts_endpoint=nowhere,
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # the standard format, tracebacks too
    sdk = logging.getLogger("credentials")
    saved = sdk.level
    sdk.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(KmsUnavailableError):
            credentials.current()
    finally:
        logging.getLogger().removeHandler(handler)
        sdk.setLevel(saved)
    written = stream.getvalue()
    assert "Refresh credentials failed" in written  # the logs were on
    leaked = written.count(token)  # a count: a failure must not print it
    assert leaked == 0
