"""Structured logs: one JSON object per line, and a guard that keeps secrets out.

Our log calls say what happened with a stable ``event`` name and the fields of
:data:`LOG_FIELDS`, passed through ``extra=``::

    logger.warning("quarantining message %s", message_id,
                   extra={"event": "message_quarantined", "queue": queue,
                          "message_id": message_id, "reason": reason})

:class:`JsonFormatter` writes exactly these keys, always in this order:

``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``event`` (the
``extra`` event name, else the message template, which is stable too),
``message`` (the rendered text), then any of :data:`LOG_FIELDS` the call gave,
then ``error_type`` and ``stack`` (file:line function frames) when an exception
is logged (``stack`` at ``--log-level debug`` only).

Quiet by default: below DEBUG, no traceback is written (the text format names
the exception's type instead) and third-party loggers (pika, the Alibaba SDKs)
speak only at CRITICAL, since our code logs each failure once with its cause;
see :mod:`envelope_mq.shared.thirdparty_logs`.

No key material and no plaintext, by construction: any other ``extra`` key is
dropped; a field value that is not str, int, float, bool or None is written
as its type name; :func:`configure_logging` makes every record (ours, pika's,
the SDK's) replace its bytes-like arguments with ``<N bytes>`` as it is created,
before any handler sees it, since data keys and plaintexts are bytes; and an
exception's text is never written (a handler's exception may quote the
message), only its type and frames.

One record is one line, in both formats, whatever a publisher put in a
``message_id`` or a header: :class:`TextFormatter` escapes control characters
and Unicode line breaks (newline, ESC, U+2028... as ``\\n``, ``\\x1b``,
``\\u2028``), and
:class:`JsonFormatter` escapes the line breaks JSON itself leaves raw
(U+0085, U+2028, U+2029), which line-splitting readers would split on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

from envelope_mq.shared import thirdparty_logs

__all__ = [
    "LOG_FIELDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "RedactBytesFilter",
    "TextFormatter",
    "configure_logging",
    "logging_configured",
]

#: The ``extra=`` keys a JSON line may carry, besides the fixed ones.
LOG_FIELDS: Final = (
    "queue",
    "exchange",
    "routing_key",
    "message_id",
    "reason",
    "kms_code",
    "component",
    "operation",
    "outcome",
    "delivery",
    "max_deliveries",
    "count",
    "attempt",
    "delay",
    "seconds",
    "broker",
    "url",
    "service",
    "region",  # a KMS region (shared/regions.py)
)
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SCALARS = (str, int, float, bool, type(None))
_BYTES_LIKE = (bytes, bytearray, memoryview)
# Marks the handler configure_logging installed, so a second call replaces it.
_OURS = "_envelope_mq_handler"
# Every character str.splitlines() breaks on, and the other C0/C1 controls
# (an ESC starts terminal escape sequences), as Python escapes them.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_TEXT_ESCAPES = str.maketrans(
    {
        chr(c): _NAMED_ESCAPES.get(chr(c))
        or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
        for c in _CONTROLS
    }
)
# json.dumps escapes C0 controls but leaves these raw when ensure_ascii=False.
_JSON_ESCAPES = str.maketrans(
    {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _redact(value: object) -> object:
    if isinstance(value, _BYTES_LIKE):
        return f"<{len(value)} bytes>"
    return value


class RedactBytesFilter(logging.Filter):
    """Replaces bytes-like log arguments with their length; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place (other handlers see the redacted record)."""
        args = record.args
        if isinstance(args, tuple):
            if any(isinstance(a, _BYTES_LIKE) for a in args):
                record.args = tuple(_redact(a) for a in args)
        elif isinstance(args, Mapping) and any(
            isinstance(a, _BYTES_LIKE) for a in args.values()
        ):
            record.args = {k: _redact(v) for k, v in args.items()}
        if isinstance(record.msg, _BYTES_LIKE):
            record.msg = _redact(record.msg)
        return True


_GUARD = RedactBytesFilter()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the stable keys of this module's doc.

    ``tracebacks`` adds the ``stack`` of a logged exception (``error_type`` is
    always there).
    """

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        _GUARD.filter(record)  # even when the handler has no guard of its own
        line: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _field(getattr(record, "event", None)) or str(record.msg),
            "message": record.getMessage(),
        }
        for key in LOG_FIELDS:
            if key in record.__dict__:
                line[key] = _field(record.__dict__[key])
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line["error_type"] = type(error).__name__
            if self._tracebacks:
                line["stack"] = [
                    f"{frame.filename}:{frame.lineno} {frame.name}"
                    for frame in traceback.extract_tb(error.__traceback__)
                ]
        return json.dumps(line, ensure_ascii=False, default=str).translate(
            _JSON_ESCAPES
        )


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` on one line, control characters escaped.

    An exception is written as its type on the same line, never its text, as
    in the JSON format; with ``tracebacks`` (``--log-level debug``) its frames
    follow, innermost first.
    """

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__(_TEXT_FORMAT)
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of text."""
        _GUARD.filter(record)  # even when the handler has no guard of its own
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = (
                " < ".join(
                    f"{frame.filename}:{frame.lineno} {frame.name}"
                    for frame in reversed(traceback.extract_tb(error.__traceback__))
                )
                if self._tracebacks
                else ""
            )
            line += f" [{type(error).__name__}{' at ' if frames else ''}{frames}]"
        if record.stack_info and self._tracebacks:
            line += " " + record.stack_info
        return escape_controls(line)


def escape_controls(text: str) -> str:
    """``text`` with control characters and line breaks written as escapes."""
    return text.translate(_TEXT_ESCAPES)


def _field(value: object) -> object:
    # str and int subclasses (a StrEnum reason code) pass, as json writes them.
    if isinstance(value, _SCALARS):
        return value
    return f"<{type(value).__name__}>"


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{millis:03d}Z"
    )


def configure_logging(
    log_format: str = "text",
    level: str | int = "warning",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as text or JSON lines.

    Installs one handler on the root logger, replacing one installed earlier
    by this function; the bytes guard sits on the handler, so it also covers
    third-party loggers. Unless ``level`` is DEBUG, tracebacks are left out
    and third-party loggers are held at CRITICAL (module docstring).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}")
    numeric = (
        level
        if isinstance(level, int)
        else logging.getLevelNamesMapping().get(level.upper())
    )
    if not isinstance(numeric, int):
        raise ValueError(f"log level must be one of {LOG_LEVELS}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    debug = numeric <= logging.DEBUG
    handler.setFormatter(
        JsonFormatter(tracebacks=debug)
        if log_format == "json"
        else TextFormatter(tracebacks=debug)
    )
    handler.addFilter(RedactBytesFilter())
    setattr(handler, _OURS, True)
    _redact_at_creation()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    thirdparty_logs.set_policy(logging.NOTSET if debug else logging.CRITICAL)
    return handler


def _redact_at_creation() -> None:
    """Redact bytes arguments as records are made, before any handler sees them.

    A filter on our handler alone would leave other handlers (a test's capture,
    a user's own) reading the record before it; the record factory is the one
    place every record passes through. Installed once.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _OURS, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _GUARD.filter(record)
        return record

    setattr(factory, _OURS, True)
    logging.setLogRecordFactory(factory)


@contextlib.contextmanager
def logging_configured(
    log_format: str = "text",
    level: str | int = "warning",
    *,
    stream: IO[str] | None = None,
) -> Iterator[logging.Handler]:
    """:func:`configure_logging` for the length of a ``with`` block, then undone.

    A command run in-process (by a test, say) leaves the logging set-up as it
    found it: handler, levels and record factory.
    """
    root = logging.getLogger()
    saved_level, saved_policy = root.level, thirdparty_logs.policy()
    saved_handlers = [h for h in root.handlers if getattr(h, _OURS, False)]
    saved_factory = logging.getLogRecordFactory()
    handler = configure_logging(log_format, level, stream=stream)
    try:
        yield handler
    finally:
        handler.flush()
        root.removeHandler(handler)
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
        thirdparty_logs.set_policy(saved_policy)
        logging.setLogRecordFactory(saved_factory)
