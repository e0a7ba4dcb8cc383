"""consumer/streams.py: offset specs, the offset file, the stream cursor."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from envelope_mq.consumer.streams import (
    MemoryOffsets,
    OffsetFile,
    OffsetSpec,
    StreamCursor,
    stream_offset,
)
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.errors import ConfigError

UTC = datetime.UTC


@pytest.mark.parametrize("name", ["first", "last", "next", " FIRST "])
def test_named_specs_are_passed_as_text(name: str) -> None:
    assert OffsetSpec.parse(name).argument() == name.strip().lower()


def test_a_number_is_an_offset() -> None:
    spec = OffsetSpec.parse("1234")
    assert spec.argument() == 1234
    assert str(spec) == "1234"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06T17:00:00Z", datetime.datetime(2026, 12, 6, 17, tzinfo=UTC)),
        ("2026-12-06T18:00:00+01:00", datetime.datetime(2026, 12, 6, 17, tzinfo=UTC)),
        ("2026-12-06T17:00:00", datetime.datetime(2026, 12, 6, 17, tzinfo=UTC)),
        ("@1796576400", datetime.datetime(2026, 12, 6, 17, tzinfo=UTC)),
    ],
)
def test_a_time_is_a_utc_timestamp(text: str, expected: datetime.datetime) -> None:
    argument = OffsetSpec.parse(text).argument()
    assert argument == expected
    assert isinstance(argument, datetime.datetime)
    assert argument.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize("text", ["", "-3", "yesterday", "@x", "first,last"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        OffsetSpec.parse(text)


def test_a_naive_timestamp_is_refused_in_the_library() -> None:
    with pytest.raises(ConfigError, match="time zone"):
        OffsetSpec.since(datetime.datetime(2026, 1, 1))


def test_the_offset_file_round_trips_and_starts_empty(tmp_path: Path) -> None:
    store = OffsetFile(tmp_path / "position")
    assert store.load() is None
    store.save(41)
    store.save(42)
    assert store.load() == 42
    assert (tmp_path / "position").read_text() == "42\n"
    assert os.listdir(tmp_path) == ["position"]  # no temporary file left


def test_a_damaged_offset_file_is_a_config_error_not_a_restart_from_zero(
    tmp_path: Path,
) -> None:
    (tmp_path / "position").write_text("garbage")
    with pytest.raises(ConfigError, match="does not hold an offset"):
        OffsetFile(tmp_path / "position").load()


def test_a_failed_save_leaves_the_old_offset_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OffsetFile(tmp_path / "position")
    store.save(7)

    def full_disk(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ConfigError, match="cannot write"):
        store.save(8)
    monkeypatch.undo()
    assert store.load() == 7
    assert os.listdir(tmp_path) == ["position"]


def headers(offset: int) -> dict[str, object]:
    return {"x-stream-offset": offset}


def test_the_cursor_starts_at_the_spec_then_resumes_after_the_last_settled() -> None:
    cursor = StreamCursor(OffsetSpec.parse("first"))
    assert cursor.consume_arguments() == {"x-stream-offset": "first"}
    cursor.settled(headers(10))
    cursor.settled(headers(11))
    assert cursor.consume_arguments() == {"x-stream-offset": 12}  # a reconnect
    assert cursor.position == 11


def test_a_stored_offset_wins_over_the_spec() -> None:
    cursor = StreamCursor(OffsetSpec.parse("first"), MemoryOffsets(99))
    assert cursor.consume_arguments() == {"x-stream-offset": 100}
    assert cursor.committed == 99


def test_commits_every_n_and_on_demand_only_when_moved() -> None:
    store = MemoryOffsets()
    cursor = StreamCursor(store=store, commit_every=3)
    cursor.consume_arguments()
    for offset in range(7):
        cursor.settled(headers(offset))
    assert (store.offset, store.saves) == (5, 2)
    cursor.commit()
    cursor.commit()
    assert (store.offset, store.saves) == (6, 3)


def test_the_cursor_never_moves_back_and_ignores_deliveries_without_an_offset() -> None:
    cursor = StreamCursor()
    cursor.settled(headers(5))
    cursor.settled(headers(3))
    cursor.settled({})
    cursor.settled({"x-stream-offset": "5"})  # not an integer: not the broker's
    assert cursor.position == 5
    assert stream_offset({"x-stream-offset": True}) is None


def test_commit_every_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        StreamCursor(commit_every=0)


def test_a_stream_topology_declares_a_classic_quarantine_queue() -> None:
    topology = Topology(
        "events",
        queue_type="stream",
        queue_arguments={"x-max-age": "7D"},
        quarantine_arguments={"x-expires": 1000},
    )
    assert topology.is_stream
    assert topology.queue_declare_arguments() == {
        "x-queue-type": "stream",
        "x-max-age": "7D",
    }
    assert topology.quarantine_declare_arguments() == {
        "x-queue-type": "classic",
        "x-expires": 1000,
    }
    classic = Topology("jobs", queue_arguments={"x-expires": 5})
    assert classic.quarantine_declare_arguments() == classic.queue_declare_arguments()


def test_a_stream_cursor_needs_a_stream() -> None:
    from envelope_mq.consumer.worker import EncryptedConsumer
    from envelope_mq.shared.envelope import Opener
    from envelope_mq.shared.keycache import UnwrapCache
    from envelope_mq.shared.kms import InMemoryKeyProvider

    with pytest.raises(ConfigError, match="stream queue"):
        EncryptedConsumer(
            "amqp://localhost",
            Topology("jobs"),
            Opener(UnwrapCache(InMemoryKeyProvider(["k"]))),
            lambda _m: None,
            stream=StreamCursor(),
        )


def test_the_asyncio_consumer_refuses_a_stream() -> None:
    pytest.importorskip("aio_pika")
    from envelope_mq.shared.keycache import UnwrapCache
    from envelope_mq.shared.kms import InMemoryKeyProvider

    from envelope_mq.aio.consumer import AsyncEncryptedConsumer

    with pytest.raises(ConfigError, match="does not read streams"):
        AsyncEncryptedConsumer(
            "amqp://localhost",
            Topology("events", queue_type="stream"),
            UnwrapCache(InMemoryKeyProvider(["k"])),
        )
