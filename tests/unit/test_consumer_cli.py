"""The consume command's parts that need no broker: JSON lines, arguments, signals."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pika
import pytest
from envelope_mq.consumer import cli
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.outcome import Outcome, Reason, Verdict
from envelope_mq.consumer.output import JsonLinesWriter, to_json_line
from envelope_mq.consumer.signals import stop_on_signals
from envelope_mq.consumer.streams import OffsetFile
from envelope_mq.consumer.transport import (
    QUARANTINE_REASON_HEADER,
    quarantine_properties,
)
from envelope_mq.shared.envelope import MessageMeta
from envelope_mq.shared.errors import ConfigError


def message(body: bytes, **meta: Any) -> ReceivedMessage:
    return ReceivedMessage(
        body=body,
        properties=MessageMeta("m-1", 1_700_000_000, **meta),
        headers={"x-emq-version": 1},
        context={"tenant": "ä"},
        key_id="key-1",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser()
    subparsers = top.add_subparsers()
    cli.register(subparsers)
    cli.register_replay(subparsers)
    return top


def test_utf8_body_is_written_as_text() -> None:
    line = json.loads(
        to_json_line(message("grüße".encode(), content_type="text/plain"))
    )
    assert line == {
        "message_id": "m-1",
        "body": "grüße",
        "timestamp": 1_700_000_000,
        "content_type": "text/plain",
        "context": {"tenant": "ä"},
        "key_id": "key-1",
        "redelivered": False,
    }


def test_binary_body_is_written_as_base64() -> None:
    raw = b"\xff\xfe\x00binary"
    line = json.loads(to_json_line(message(raw)))
    assert line["body_encoding"] == "base64"
    assert base64.b64decode(line["body"]) == raw


def test_optional_properties_appear_only_when_set() -> None:
    plain = json.loads(to_json_line(message(b"x")))
    full = json.loads(
        to_json_line(message(b"x", content_encoding="gzip", type="order.created"))
    )
    assert "content_encoding" not in plain
    assert "type" not in plain
    assert full["content_encoding"] == "gzip"
    assert full["type"] == "order.created"


def test_json_line_is_one_line() -> None:
    assert "\n" not in to_json_line(message(b"line one\nline two"))


def test_writer_flushes_each_line() -> None:
    stream = io.StringIO()
    writer = JsonLinesWriter(stream)
    writer(message(b"a"))
    writer(message(b"b"))
    assert [json.loads(x)["body"] for x in stream.getvalue().splitlines()] == ["a", "b"]
    assert writer.written == 2


class BrokenStream(io.StringIO):
    def write(self, _text: str) -> int:
        raise BrokenPipeError("reader went away")


def test_writer_failure_raises_and_asks_to_stop() -> None:
    stops: list[bool] = []
    writer = JsonLinesWriter(BrokenStream(), on_error=lambda: stops.append(True))
    with pytest.raises(BrokenPipeError):
        writer(message(b"a"))
    assert writer.failed
    assert stops == [True]


def test_consume_arguments_are_parsed() -> None:
    args = parser().parse_args(
        [
            "consume",
            "--queue",
            "orders",
            "--queue-type",
            "quorum",
            "--count",
            "3",
            "--allow-context",
            "tenant=a",
            "--allow-context",
            "tenant=b",
            "--max-deliveries",
            "2",
        ]
    )
    assert args.run is cli.run_consume
    assert args.queue == "orders"
    assert args.queue_type == "quorum"
    assert args.count == 3
    assert args.allow_context == ["tenant=a", "tenant=b"]
    assert args.max_deliveries == 2
    assert args.prefetch == 1000


@pytest.mark.parametrize("bad", [["--count", "0"], ["--prefetch", "-1"]])
def test_consume_rejects_non_positive_numbers(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["consume", "--queue", "q", *bad])


def test_consume_requires_a_queue() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["consume"])


def test_replay_reasons_are_repeatable() -> None:
    args = parser().parse_args(
        [
            "quarantine-replay",
            "--queue",
            "q",
            "--reason",
            "kms-rejected",
            "--reason",
            "x",
        ]
    )
    assert args.run is cli.run_replay
    assert args.reason == ["kms-rejected", "x"]


def test_bad_allowed_context_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    args = parser().parse_args(["consume", "--queue", "q", "--allow-context", "nokey"])
    assert cli.run_consume(args) == 1
    assert "key=value" in capsys.readouterr().err


def test_first_signal_asks_to_stop_and_restores_the_handlers() -> None:
    stops: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(lambda: stops.append(True)):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops == [True]
        assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGTERM) == before


def test_quarantine_copy_keeps_the_original_and_adds_the_reason() -> None:
    original = pika.BasicProperties(
        message_id="m-1",
        timestamp=5,
        content_type="text/plain",
        expiration="60000",
        user_id="guest",
        headers={"x-emq-version": 1, "x-emq-quarantine-reason": "forged"},
    )
    outcome = Outcome(Verdict.QUARANTINE, Reason.KMS_REJECTED, "Forbidden.KeyNotFound")

    copy = quarantine_properties(original, outcome, "orders", 1_700_000_000.5)

    assert copy.message_id == "m-1"
    assert copy.timestamp == 5
    assert copy.content_type == "text/plain"
    assert copy.delivery_mode == 2
    assert copy.expiration is None
    assert copy.user_id is None
    assert copy.headers == {
        "x-emq-version": 1,
        QUARANTINE_REASON_HEADER: "kms-rejected",
        "x-emq-quarantine-kms-code": "Forbidden.KeyNotFound",
        "x-emq-quarantine-queue": "orders",
        "x-emq-quarantine-time": 1_700_000_000,
    }


def test_stream_arguments_make_a_cursor_with_an_offset_file(tmp_path: Path) -> None:
    args = parser().parse_args(
        ["consume", "--queue", "events", "--queue-type", "stream", "--offset",
         "2026-12-06T17:00:00Z", "--offset-file", str(tmp_path / "pos"),
         "--commit-every", "10"]
    )  # fmt: skip
    cursor = cli.stream_cursor(args)
    assert cursor is not None
    assert str(cursor.start) == "2026-12-06T17:00:00+00:00"
    assert isinstance(cursor.store, OffsetFile)
    assert cursor.store.path == tmp_path / "pos"


def test_offsets_need_a_stream_and_a_valid_spec(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser().parse_args(["consume", "--queue", "jobs", "--offset", "first"])
    with pytest.raises(ConfigError, match="--queue-type stream"):
        cli.stream_cursor(args)
    plain = parser().parse_args(["consume", "--queue", "jobs"])
    assert cli.stream_cursor(plain) is None
    with pytest.raises(SystemExit):
        parser().parse_args(["consume", "--queue", "e", "--offset", "yesterday"])
    assert "stream offset must be" in capsys.readouterr().err
