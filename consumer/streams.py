"""Reading a RabbitMQ stream: where to start, and where we are.

A stream (``x-queue-type: stream``) keeps every message until its retention
drops it; a consumer reads it from an offset it names in ``basic.consume``
(``x-stream-offset``), and the broker stamps each delivery with the same
header. The broker remembers nothing of an AMQP 0-9-1 consumer's position, and
acknowledgements only return credit, so the position is ours to keep:

- :class:`OffsetSpec` is where a consumer starts the first time (``first``,
  ``last``, ``next``, an offset, or a timestamp);
- :class:`StreamCursor` follows the offset of the last delivery settled
  (handled, quarantined or dropped as a duplicate: deliveries are settled in
  order, so every offset below it is settled too). A reconnect resumes at the
  next offset, so nothing is lost and nothing is read twice; the cursor
  commits the position to its :class:`OffsetStore` every ``commit_every``
  deliveries, when the consumer is idle, and when it stops, so a restart
  re-reads at most ``commit_every`` deliveries (at-least-once);
- :class:`OffsetFile` stores the position in a small file, replaced
  atomically (write, fsync, rename), so a crash leaves the old or the new
  position, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from envelope_mq.shared.errors import ConfigError

__all__ = [
    "DEFAULT_COMMIT_EVERY",
    "STREAM_OFFSET_HEADER",
    "MemoryOffsets",
    "OffsetFile",
    "OffsetSpec",
    "OffsetStore",
    "StreamCursor",
    "stream_offset",
]

#: The header a stream stamps on each delivery, and the basic.consume argument.
STREAM_OFFSET_HEADER = "x-stream-offset"
#: Deliveries between two commits: the most a restart reads again.
DEFAULT_COMMIT_EVERY = 1000
_NAMED = ("first", "last", "next")
_SECONDS = re.compile(r"^@(\d+)$")


@dataclass(frozen=True)
class OffsetSpec:
    """Where a stream consumer starts: a name, an offset, or a timestamp.

    ``first`` is the oldest message the stream still holds, ``last`` the
    start of its last chunk (a few messages before the end), ``next`` the
    messages published from now on (RabbitMQ's default), an ``offset`` that
    message and what follows, a ``timestamp`` (UTC) the first chunk published
    at or after it (the broker's granularity: a chunk, so a few earlier
    messages may come too).
    """

    name: str = "next"  # first, last, next, offset or timestamp
    offset: int = 0
    timestamp: datetime.datetime | None = None

    def __post_init__(self) -> None:
        if self.name not in (*_NAMED, "offset", "timestamp"):
            raise ConfigError(f"unknown stream offset spec {self.name!r}")
        if self.name == "offset" and self.offset < 0:
            raise ConfigError("a stream offset cannot be negative")
        if self.name == "timestamp" and (
            self.timestamp is None or self.timestamp.tzinfo is None
        ):
            raise ConfigError("a stream timestamp needs a time zone (UTC)")

    @classmethod
    def at(cls, offset: int) -> OffsetSpec:
        """Start at ``offset``."""
        return cls("offset", offset=offset)

    @classmethod
    def since(cls, when: datetime.datetime) -> OffsetSpec:
        """Start at the first chunk published at or after ``when`` (aware)."""
        return cls("timestamp", timestamp=when)

    @classmethod
    def parse(cls, text: str) -> OffsetSpec:
        """``first``, ``last``, ``next``, an offset (``1234``), or a timestamp.

        A timestamp is ISO 8601 (``2026-12-06T17:00:00Z``; without a zone it
        is UTC) or ``@SECONDS`` since the epoch.
        """
        value = text.strip().lower()
        if value in _NAMED:
            return cls(value)
        if value.isdigit():
            return cls.at(int(value))
        seconds = _SECONDS.match(value)
        if seconds:
            return cls.since(
                datetime.datetime.fromtimestamp(int(seconds[1]), datetime.UTC)
            )
        try:
            when = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigError(
                f"stream offset must be first, last, next, an offset, an ISO 8601 "
                f"time or @SECONDS: {text!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return cls.since(when)

    def argument(self) -> str | int | datetime.datetime:
        """The ``x-stream-offset`` value of ``basic.consume`` (a datetime is an
        AMQP timestamp)."""
        if self.name == "offset":
            return self.offset
        if self.name == "timestamp" and self.timestamp is not None:
            return self.timestamp.astimezone(datetime.UTC)
        return self.name

    def __str__(self) -> str:
        if self.name == "offset":
            return str(self.offset)
        if self.timestamp is not None:
            return self.timestamp.isoformat()
        return self.name


class OffsetStore(Protocol):
    """Where a consumer's stream position lives between runs."""

    def load(self) -> int | None:
        """The last offset settled, or None when nothing was ever committed."""

    def save(self, offset: int) -> None:
        """Remember ``offset`` as the last one settled (durably)."""


class MemoryOffsets:
    """An :class:`OffsetStore` in memory (one process: tests, a pipeline stage)."""

    def __init__(self, offset: int | None = None) -> None:
        self.offset = offset
        self.saves = 0

    def load(self) -> int | None:
        return self.offset

    def save(self, offset: int) -> None:
        self.offset = offset
        self.saves += 1


class OffsetFile:
    """An :class:`OffsetStore` in a file holding one decimal offset.

    Each save writes a temporary file beside it, fsyncs it and renames it over
    the old one (then fsyncs the directory): a crash at any point leaves a
    whole offset, the old or the new. One consumer per file: two consumers
    sharing one would each skip what the other read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OffsetFile({str(self.path)!r})"

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the offset file {self.path}: {exc}"
            ) from exc
        if not text.isdigit():
            raise ConfigError(
                f"the offset file {self.path} does not hold an offset: {text[:40]!r}"
            )
        return int(text)

    def save(self, offset: int) -> None:
        directory = self.path.parent
        temporary = directory / f".{self.path.name}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as stream:
                stream.write(f"{offset}\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
            self._sync_directory(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ConfigError(
                f"cannot write the offset file {self.path}: {exc}"
            ) from exc

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        # The rename is durable once the directory entry is.
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stream_offset(headers: Mapping[str, object]) -> int | None:
    """The stream offset the broker stamped on a delivery, if any."""
    value = headers.get(STREAM_OFFSET_HEADER)
    return value if type(value) is int else None


class StreamCursor:
    """A stream consumer's position: where to (re)start, what to commit.

    ``start`` applies only when ``store`` holds no offset (the first run);
    afterwards the consumer resumes after the stored offset. Thread-safe for
    :meth:`commit` from another thread than the one settling deliveries.
    """

    def __init__(
        self,
        start: OffsetSpec | None = None,
        store: OffsetStore | None = None,
        *,
        commit_every: int = DEFAULT_COMMIT_EVERY,
    ) -> None:
        if commit_every < 1:
            raise ConfigError("commit_every must be at least 1")
        self.start = start or OffsetSpec()
        self.store = store
        self._commit_every = commit_every
        self._lock = threading.Lock()
        self._loaded = False
        self._settled: int | None = None  # last offset settled, in memory
        self._committed: int | None = None
        self._since_commit = 0
        self.commits = 0

    @property
    def position(self) -> int | None:
        """The last offset settled (None before the first), committed or not."""
        with self._lock:
            return self._settled

    @property
    def committed(self) -> int | None:
        """The last offset committed to the store."""
        with self._lock:
            return self._committed

    def consume_arguments(self) -> dict[str, object]:
        """``basic.consume`` arguments for the next (re)subscription."""
        with self._lock:
            if not self._loaded:
                self._loaded = True
                if self.store is not None:
                    self._settled = self._committed = self.store.load()
            if self._settled is not None:
                return {STREAM_OFFSET_HEADER: self._settled + 1}
        return {STREAM_OFFSET_HEADER: self.start.argument()}

    def settled(self, headers: Mapping[str, object]) -> None:
        """One delivery was settled; commit when ``commit_every`` have been."""
        offset = stream_offset(headers)
        if offset is None:
            return
        with self._lock:
            if self._settled is not None and offset <= self._settled:
                return  # never move back
            self._settled = offset
            self._since_commit += 1
            due = self._since_commit >= self._commit_every
        if due:
            self.commit()

    def commit(self) -> None:
        """Write the position to the store, if it moved since the last commit."""
        with self._lock:
            offset = self._settled
            if offset is None or offset == self._committed or self.store is None:
                self._since_commit = 0
                return
            self.store.save(offset)
            self._committed = offset
            self._since_commit = 0
            self.commits += 1
