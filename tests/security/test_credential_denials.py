"""Credentials against the emulator in strict mode: who may do what, and how it fails.

Raw signed requests check the codes of docs/kms-emulator.md for a wrong secret,
an unknown AccessKeyId, an expired timestamp and a reused nonce; the official
SDK, through our client, checks least privilege (the producer cannot decrypt,
the consumer cannot generate data keys). Then the consumer meets failures for
real: a refusal for a key no policy lists quarantines the message with the KMS
code, transient ones hold it until KMS answers again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from envelope_mq.consumer.backoff import Backoff
from envelope_mq.consumer.transport import QUARANTINE_KMS_CODE_HEADER
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.kms import AliyunKms
from scenario_kit import (
    ConsumerThread,
    QuarantineWatcher,
    RawPublisher,
    ledger_handler,
    payload,
    scenario_topology,
    settle,
)

from envelope_mq.testing.kms import Credentials, KmsFixture
from envelope_mq.testing.ledger import Expect, MessageLedger
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.security


def _encode(text: str) -> str:
    return quote(text, safe="~")


def signed_query(
    creds: Credentials,
    action: str,
    params: dict[str, str],
    *,
    timestamp: datetime | None = None,
    nonce: str | None = None,
) -> str:
    """A query string signed with RPC signature V1 (HMAC-SHA1), as the SDKs do."""
    when = timestamp or datetime.now(UTC)
    query = {
        "Action": action,
        "Version": "2016-01-20",
        "Format": "JSON",
        "RegionId": "cn-hangzhou",
        "AccessKeyId": creds.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce or uuid.uuid4().hex,
        "Timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **params,
    }
    canonical = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query.items()))
    to_sign = f"GET&{_encode('/')}&{_encode(canonical)}"
    key = (creds.access_key_secret + "&").encode()
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha1).digest())
    return f"{canonical}&Signature={_encode(signature.decode())}"


def call(endpoint: str, query: str) -> tuple[int, str]:
    """(HTTP status, Code) of one request; Code is "" on success."""
    request = urllib.request.Request(f"http://{endpoint}/?{query}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, ""
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, str(json.loads(exc.read())["Code"])


def generate(
    kms: KmsFixture, creds: Credentials, timestamp: datetime | None = None
) -> tuple[int, str]:
    query = signed_query(
        creds, "GenerateDataKey", {"KeyId": kms.key_id}, timestamp=timestamp
    )
    return call(kms.endpoint, query)


def test_the_signer_here_is_right_so_the_denials_mean_something(
    emq_kms: KmsFixture,
) -> None:
    assert generate(emq_kms, emq_kms.producer) == (200, "")


def test_a_wrong_secret_is_denied(emq_kms: KmsFixture) -> None:
    wrong = Credentials(emq_kms.producer.access_key_id, "not-the-secret")
    assert generate(emq_kms, wrong) == (400, "SignatureDoesNotMatch")


def test_an_unknown_access_key_id_is_denied(emq_kms: KmsFixture) -> None:
    unknown = Credentials("no-such-key-id", emq_kms.producer.access_key_secret)
    assert generate(emq_kms, unknown) == (404, "InvalidAccessKeyId.NotFound")


def test_an_expired_timestamp_is_denied(emq_kms: KmsFixture) -> None:
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    assert generate(emq_kms, emq_kms.producer, timestamp=an_hour_ago) == (
        400,
        "InvalidTimeStamp.Expired",
    )


def test_a_reused_nonce_is_denied(emq_kms: KmsFixture) -> None:
    query = signed_query(emq_kms.producer, "GenerateDataKey", {"KeyId": emq_kms.key_id})
    assert call(emq_kms.endpoint, query) == (200, "")
    assert call(emq_kms.endpoint, query) == (400, "SignatureNonceUsed")


def test_the_producer_principal_cannot_decrypt(emq_kms: KmsFixture) -> None:
    wrapped = AliyunKms.from_settings(emq_kms.settings("producer", ["amqp://x"]))
    data_key = wrapped.generate_data_key(emq_kms.key_id, {})
    with pytest.raises(KmsRequestError) as denied:
        wrapped.decrypt_data_key(data_key.wrapped, {})
    assert denied.value.code == "Forbidden.NoPermission"
    assert denied.value.http_status == 403


def test_the_consumer_principal_cannot_generate_data_keys(emq_kms: KmsFixture) -> None:
    client = AliyunKms.from_settings(emq_kms.settings("consumer", ["amqp://x"]))
    with pytest.raises(KmsRequestError) as denied:
        client.generate_data_key(emq_kms.key_id, {})
    assert denied.value.code == "Forbidden.NoPermission"


def test_a_refusal_for_a_key_no_policy_lists_quarantines_with_the_code(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    # The producer's principal may not Decrypt: without an --allow-key policy
    # naming the key, that says the message is not for this consumer, so it
    # is quarantined (a refusal of the caller itself stops the consumer
    # instead: tests/security/test_consumer_credentials.py).
    ledger = MessageLedger("consumer credentials: the producer's principal")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    publish_five(emq_kms.settings("producer", urls), topology, ledger, "quarantined")
    ledger.fault("consumer with the producer's principal", 1)
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("producer", urls), topology, ledger_handler(ledger)
    )
    with (
        QuarantineWatcher(urls, topology, ledger) as watcher,
        ConsumerThread(consumer),
    ):
        settle(ledger)
    report = ledger.check()
    assert report["quarantined"] == {"kms-rejected": 5}
    codes = {str(h.get(QUARANTINE_KMS_CODE_HEADER)) for h in watcher.headers.values()}
    assert codes == {"Forbidden.NoPermission"}


def test_a_consumer_holds_while_kms_fails_transiently_then_resumes(
    emq_kms: KmsFixture, emq_rabbitmq_url: str, emq_amqp_names: AmqpNames
) -> None:
    ledger = MessageLedger("consumer: KMS answers 503 until it recovers")
    urls = [emq_rabbitmq_url]
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    publish_five(emq_kms.settings("producer", urls), topology, ledger, "handled")
    consumer = EncryptedConsumer.from_settings(
        emq_kms.settings("consumer", urls),
        topology,
        ledger_handler(ledger),
        kms_backoff=Backoff(initial=0.1, cap=0.5),
    )
    emq_kms.emulator.faults.set(error_ratio=1.0)
    ledger.fault("KMS answers 503 to every request", 1)
    with QuarantineWatcher(urls, topology, ledger), ConsumerThread(consumer):
        deadline = time.monotonic() + 60
        while consumer.stats.kms_retries < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.stats.handled == 0
        emq_kms.emulator.faults.clear()
        settle(ledger)
    report = ledger.check()
    assert report["handled"] == 5
    assert report["quarantined"] == {}
    assert consumer.stats.kms_retries >= 3


def publish_five(
    producer: Settings, topology: Topology, ledger: MessageLedger, expect: Expect
) -> None:
    with RawPublisher(producer, topology) as publisher:
        for i in range(5):
            body = payload("creds", i, 64)
            ledger.published(f"creds-{i}", body, expect=expect)
            publisher.send(publisher.seal(body, f"creds-{i}"), f"creds-{i}")
