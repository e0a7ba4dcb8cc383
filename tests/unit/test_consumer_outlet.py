"""consumer/outlet.py: pika's privates are checked where the outlet takes them."""

from __future__ import annotations

import pika.channel
from envelope_mq.consumer.outlet import async_channel, output_hook


class _Holder:
    def __init__(self, impl: object) -> None:
        self._impl = impl


def test_only_a_pika_channel_under_the_blocking_channel_is_taken() -> None:
    # Anything else (no _impl, something else under that name) means the
    # public path (tests/integration/test_outlet_paths.py runs both).
    assert async_channel(object()) is None
    assert async_channel(_Holder(object())) is None
    impl = pika.channel.Channel.__new__(pika.channel.Channel)
    assert async_channel(_Holder(impl)) is impl


def test_the_output_hook_is_taken_only_when_it_is_there_and_callable() -> None:
    class Connection:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def _adapter_emit_data(self, data: bytes) -> None:
            self.written.append(data)

    class NotCallable:
        _adapter_emit_data = "no"

    assert output_hook(object()) is None
    assert output_hook(_Holder(object())) is None
    assert output_hook(_Holder(NotCallable())) is None
    inner = Connection()
    emit = output_hook(_Holder(inner))
    assert emit is not None
    emit(b"frames")
    assert inner.written == [b"frames"]
