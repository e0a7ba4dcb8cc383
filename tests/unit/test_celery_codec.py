"""The envelope kombu serializer and the worker's judgement, in process.

Real kombu serialization and the real envelope core; KMS is the in-memory
provider (the integration suite runs a real worker against the emulator).
"""

from __future__ import annotations

import base64
import json
from typing import ClassVar

import pytest
from envelope_mq.consumer.outcome import Reason, Verdict
from envelope_mq.shared.errors import DecryptionError
from envelope_mq.shared.kms import InMemoryKeyProvider
from kombu.serialization import dumps, loads

from envelope_mq.celery import NAME, setup
from envelope_mq.celery.codec import CONTENT_TYPE, Binding, bind_next
from envelope_mq.celery.framing import MAGIC, unframe
from envelope_mq.celery.worker import judge

KEY = "key-1"


class _App:
    """What setup() touches of a Celery app: its configuration."""

    class conf:  # noqa: N801 - Celery's attribute name
        values: ClassVar[dict[str, object]] = {}

        @classmethod
        def update(cls, **values: object) -> None:
            cls.values.update(values)


@pytest.fixture
def codec():  # type: ignore[no-untyped-def]
    return setup(
        _App(), key_id=KEY, context={"app": "t"}, provider=InMemoryKeyProvider([KEY])
    )


def test_setup_makes_envelope_the_only_content() -> None:
    app = _App()
    setup(app, key_id=KEY, provider=InMemoryKeyProvider([KEY]))
    values = app.conf.values
    assert values["task_serializer"] == NAME
    assert values["accept_content"] == [NAME]
    assert values["result_serializer"] == NAME
    assert values["task_acks_late"] is True


def test_round_trip_through_kombu_hides_the_payload(codec) -> None:  # type: ignore[no-untyped-def]
    payload = [["s3cret-arg"], {"k": "s3cret-kw"}, {}]
    content_type, encoding, body = dumps(payload, serializer=NAME)
    assert content_type == CONTENT_TYPE
    assert body.startswith(MAGIC)
    assert b"s3cret" not in body
    assert loads(body, content_type, encoding, accept=[CONTENT_TYPE]) == payload


def test_a_flipped_bit_is_refused(codec) -> None:  # type: ignore[no-untyped-def]
    body = bytearray(codec.encode([[1], {}, {}]))
    body[-1] ^= 1
    with pytest.raises(DecryptionError):
        codec.decode(bytes(body))
    outcome, payload = judge(codec, CONTENT_TYPE, {"id": "x", "task": "t"}, bytes(body))
    assert outcome is not None
    assert (outcome.verdict, outcome.reason) == (
        Verdict.QUARANTINE,
        Reason.UNDECRYPTABLE,
    )
    assert payload is None


def test_the_frame_header_is_bound(codec) -> None:  # type: ignore[no-untyped-def]
    body = codec.encode([[1], {}, {}])
    parts = unframe(body)
    header = json.loads(body[8 : len(body) - len(parts.body)])
    header["type"] = "celery.task:other"
    encoded = json.dumps(header).encode()
    forged = MAGIC + len(encoded).to_bytes(4, "big") + encoded + parts.body
    with pytest.raises(DecryptionError):
        codec.decode(forged)


def test_task_messages_are_bound_to_their_id_and_name(codec) -> None:  # type: ignore[no-untyped-def]
    bind_next(Binding("id-1", "emq.add"))
    body = codec.encode([[1, 2], {}, {}])
    outcome, payload = judge(
        codec, CONTENT_TYPE, {"id": "id-1", "task": "emq.add"}, body
    )
    assert outcome is None
    assert payload == [[1, 2], {}, {}]
    for headers in (
        {"id": "id-2", "task": "emq.add"},
        {"id": "id-1", "task": "emq.rm"},
    ):
        outcome, _ = judge(codec, CONTENT_TYPE, headers, body)
        assert outcome is not None
        assert outcome.detail == "sealed for another task message"
    # the binding is used once: the next message is not a task's
    unbound = codec.encode([[1, 2], {}, {}])
    outcome, _ = judge(codec, CONTENT_TYPE, {"id": "id-1", "task": "emq.add"}, unbound)
    assert outcome is not None


def test_unsealed_and_denied_messages_are_quarantined(codec) -> None:  # type: ignore[no-untyped-def]
    outcome, _ = judge(
        codec, "application/json", {"id": "i", "task": "t"}, b"[[],{},{}]"
    )
    assert outcome is not None
    assert (outcome.reason, outcome.detail) == (Reason.MALFORMED, "not sealed")
    denied = setup(
        _App(),
        key_id=KEY,
        context={"app": "other"},
        provider=InMemoryKeyProvider([KEY]),
        allow_context=["app=t"],
    )
    outcome, _ = judge(denied, CONTENT_TYPE, {}, denied.encode([[], {}, {}]))
    assert outcome is not None
    assert outcome.reason is Reason.CONTEXT_DENIED


def test_the_allowed_key_policy_applies_to_task_messages() -> None:
    provider = InMemoryKeyProvider([KEY, "key-2"])
    other = setup(_App(), key_id="key-2", provider=provider)
    body = other.encode([[], {}, {}])
    codec = setup(_App(), key_id=KEY, provider=provider, allow_key=[KEY])
    outcome, payload = judge(codec, CONTENT_TYPE, {}, body)
    assert outcome is not None
    assert outcome.reason is Reason.KEY_DENIED
    assert payload is None


def _header(body: bytes) -> dict[str, object]:
    parts = unframe(body)
    return json.loads(body[8 : len(body) - len(parts.body)])  # type: ignore[no-any-return]


def _reframed(header: dict[str, object], body: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return MAGIC + len(encoded).to_bytes(4, "big") + encoded + unframe(body).body


def test_wire_format_2_frames_carry_x_emq_as_base64_and_open_on_any_worker() -> None:
    provider = InMemoryKeyProvider([KEY])
    v1 = setup(_App(), key_id=KEY, context={"app": "t"}, provider=provider)
    v2 = setup(
        _App(), key_id=KEY, context={"app": "t"}, provider=provider, wire_version=2
    )
    body = v2.encode([["x"], {}, {}])
    header = _header(body)
    assert "x-emq-version" not in header
    assert isinstance(header["x-emq"], str)
    assert unframe(body).headers["x-emq"] == base64.b64decode(header["x-emq"])
    for worker in (v1, v2):  # each opens both versions
        assert worker.decode(body) == [["x"], {}, {}]
        assert worker.decode(v1.encode([["y"], {}, {}])) == [["y"], {}, {}]


@pytest.mark.parametrize("value", [None, 7, "not base64!", "AAE", "AAF="])
def test_a_v2_frame_whose_x_emq_is_not_canonical_base64_is_malformed(
    value: object,
) -> None:
    codec = setup(
        _App(), key_id=KEY, provider=InMemoryKeyProvider([KEY]), wire_version=2
    )
    body = codec.encode([[1], {}, {}])
    forged = _reframed({**_header(body), "x-emq": value}, body)
    outcome, payload = judge(codec, CONTENT_TYPE, {"id": "x", "task": "t"}, forged)
    assert outcome is not None
    assert (outcome.verdict, outcome.reason) == (Verdict.QUARANTINE, Reason.MALFORMED)
    assert payload is None
