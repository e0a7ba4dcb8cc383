"""The publisher's two write paths: which one a pika connection gets, and that the
public path publishes the very properties the frame path writes."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from envelope_mq.producer import TransportOptions
from envelope_mq.producer.frames import header_payload
from envelope_mq.producer.transport import _properties, frame_writer
from pika import frame

HEADERS: dict[str, Any] = {
    "x-emq-version": 1,
    "x-emq-alg": "AES-256-GCM",
    "x-emq-key-id": "key-Ω",
    "x-emq-data-key": "AAJrMUckWu15KnXK/WBUxLqi4urMqBqUiQ2ZNawtG4GUA==",
    "x-emq-context": '{"tenant":"ä"}',
}


class WithHook:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


class WithoutHook:
    pass


class HookNotCallable:
    _adapter_emit_data = b"not a method"


def test_a_connection_with_the_hook_gets_the_frame_path() -> None:
    connection = WithHook()
    emit = frame_writer(connection)
    assert emit is not None
    emit(b"frames")
    assert connection.written == [b"frames"]


@pytest.mark.parametrize("connection", [WithoutHook(), HookNotCallable()])
def test_a_connection_without_a_callable_hook_gets_the_public_path(
    connection: object,
) -> None:
    assert frame_writer(connection) is None


def test_a_real_pika_connection_has_the_hook() -> None:
    # If a pika release drops it, the publisher still works (public path), but
    # silently slower: this says so.
    assert callable(getattr(pika.SelectConnection, "_adapter_emit_data", None))


def test_frames_are_the_default_and_the_public_path_a_setting() -> None:
    assert TransportOptions().write_frames is True
    assert TransportOptions(write_frames=False).write_frames is False


@pytest.mark.parametrize(
    "optional",
    [{}, {"content_type": "text/plain", "content_encoding": "gzip", "type": "t"}],
)
def test_the_public_path_sends_the_properties_the_frame_path_writes(
    optional: dict[str, str],
) -> None:
    payload = header_payload(
        1052,
        HEADERS,
        message_id="6f1c1d2e-0b7a-4c8e-9a65-1f5b8d3c2e10",
        timestamp=1_700_000_000,
        **optional,
    )
    properties = _properties(payload)
    assert properties.headers == HEADERS
    assert properties.delivery_mode == 2
    assert properties.message_id == "6f1c1d2e-0b7a-4c8e-9a65-1f5b8d3c2e10"
    assert properties.timestamp == 1_700_000_000
    for name, value in optional.items():
        assert getattr(properties, name) == value
    # pika marshals them back to exactly the payload the frame path writes.
    marshalled = frame.Header(1, 1052, properties).marshal()
    assert marshalled[7:-1] == payload
