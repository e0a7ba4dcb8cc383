"""What a stage handler may return, and the ids the stage gives its outputs."""

from __future__ import annotations

import uuid

import pytest
from envelope_mq.shared.errors import ConfigError

from envelope_mq.stage_output import (
    _NAMESPACE,
    StageOutput,
    output_message_id,
    outputs_of,
)


@pytest.mark.parametrize(
    ("key_id", "input_id", "index"),
    [("k", "m", 0), ("key-1", "6f1e0c52-5a8e", 7), ("clé", "ünïcode", 123)],
)
def test_the_derived_id_is_uuid5_of_key_input_and_position(
    key_id: str, input_id: str, index: int
) -> None:
    expected = uuid.uuid5(_NAMESPACE, f"{key_id}\n{input_id}\n{index}")
    assert output_message_id(key_id, input_id, index) == str(expected)
    assert uuid.UUID(output_message_id(key_id, input_id, index)).version == 5


def test_a_redelivered_input_gets_the_same_ids_and_nothing_else_does() -> None:
    first = [output_message_id("k", "in-1", i) for i in range(3)]
    assert first == [output_message_id("k", "in-1", i) for i in range(3)]
    others = {
        output_message_id("k", "in-2", 0),
        output_message_id("other-key", "in-1", 0),
    }
    assert len(set(first)) == 3
    assert not others & set(first)


def test_what_a_handler_returns_becomes_a_list_of_outputs() -> None:
    out = StageOutput(b"x", routing_key="r")
    assert outputs_of(None) == []
    assert outputs_of([]) == []
    assert outputs_of(b"body") == [StageOutput(b"body")]
    assert outputs_of(out) == [out]
    assert outputs_of([b"a", out]) == [StageOutput(b"a"), out]
    assert outputs_of(b for b in (b"a", b"b")) == [StageOutput(b"a"), StageOutput(b"b")]


@pytest.mark.parametrize("bad", ["text", {"a": 1}, 42, [b"ok", "text"], [None]])
def test_anything_else_is_a_handler_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="stage"):
        outputs_of(bad)
