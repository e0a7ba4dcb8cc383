from __future__ import annotations

import argparse
import io
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from envelope_mq.producer.cli import (
    Interrupt,
    Tally,
    _messages,
    _produce,
    generated,
    parse_context,
    register,
)
from envelope_mq.producer.publisher import new_message_id
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subparsers: argparse._SubParsersAction[Any] = parser.add_subparsers()
    register(subparsers)
    return parser.parse_args(["produce", *argv])


def test_context_pairs_become_a_mapping_and_values_may_hold_equals_signs() -> None:
    assert parse_context(["tenant=a", "expr=x=1", "empty="]) == {
        "tenant": "a",
        "expr": "x=1",
        "empty": "",
    }


@pytest.mark.parametrize("item", ["tenant", "=a"])
def test_a_context_item_without_a_key_and_equals_sign_is_refused(item: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_context([item])


def test_generated_messages_are_distinct_and_exactly_sized() -> None:
    messages = list(generated(50, 20))
    assert len(messages) == 50
    assert len(set(messages)) == 50
    assert {len(m) for m in messages} == {20}


def test_generated_messages_may_be_empty() -> None:
    assert list(generated(2, 0)) == [b"", b""]


def test_without_a_queue_or_a_routing_key_nothing_is_attempted() -> None:
    args = parse("hello")
    with pytest.raises(ConfigError, match="--queue"):
        _produce(args, Settings(kms_key_id="k"), io.BytesIO())


def test_the_cli_registers_its_options() -> None:
    args = parse("--queue", "q", "--queue-type", "quorum", "--context", "a=b", "m1")
    assert (args.queue, args.queue_type, args.context, args.messages) == (
        "q",
        "quorum",
        ["a=b"],
        ["m1"],
    )


def test_message_ids_are_random_version_4_uuids() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_linger_is_off_unless_given_and_must_be_positive() -> None:
    assert parse("--queue", "q").linger is None
    assert parse("--queue", "q", "--linger", "2.5").linger == 2.5
    with pytest.raises(SystemExit):
        parse("--queue", "q", "--linger", "0")


def messages_of(args: argparse.Namespace, stdin: bytes = b"") -> list[bytes]:
    return list(_messages(args, io.BytesIO(stdin), Tally()))


def test_each_file_is_one_message_with_its_bytes_unchanged(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.bin"
    first.write_bytes(b'{"order": 1}\n')
    second.write_bytes(b"\x00\xff\n\n")
    args = parse("--file", str(first), "--file", str(second))
    assert messages_of(args) == [b'{"order": 1}\n', b"\x00\xff\n\n"]


def test_with_lines_each_line_is_a_message_and_blank_lines_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "orders.txt"
    path.write_bytes(b"first\n\nsecond\r\n\nthird")
    args = parse("--file", str(path), "--lines")
    assert messages_of(args) == [b"first", b"", b"second", b"", b"third"]


def test_blank_stdin_lines_are_skipped_and_counted() -> None:
    tally = Tally()
    args = parse()
    lines = list(_messages(args, io.BytesIO(b"a\n\n\r\nb\n"), tally))
    assert lines == [b"a", b"b"]
    assert tally.blank_lines == 2


@pytest.mark.parametrize(
    "argv",
    [("hello", "--file", "x"), ("--count", "2", "--file", "x"), ("--lines",)],
)
def test_message_sources_do_not_mix_and_lines_needs_a_file(argv: tuple[str]) -> None:
    with pytest.raises(ConfigError):
        messages_of(parse(*argv))


def test_a_missing_file_is_refused_before_anything_is_published(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="not a readable file"):
        messages_of(parse("--file", str(tmp_path / "nope")))


def test_ctrl_c_outside_a_wait_for_input_is_raised_at_the_next_checkpoint() -> None:
    interrupt = Interrupt()
    with interrupt.installed():
        os.kill(os.getpid(), signal.SIGINT)  # while "publishing": only noted
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.checkpoint()


def test_ctrl_c_during_a_wait_for_input_interrupts_it_at_once() -> None:
    interrupt = Interrupt()

    def blocked_read() -> None:
        with interrupt.waiting_for_input():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # a blocked read, interrupted by the signal

    with interrupt.installed():
        with pytest.raises(KeyboardInterrupt):
            blocked_read()
        # once raised, a second Ctrl-C is Python's own again
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_ignored_by_whoever_started_produce_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Interrupt().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
