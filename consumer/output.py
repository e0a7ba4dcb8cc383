"""Decrypted messages as JSON lines, the output of ``envelope-mq consume``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import IO, Any

from envelope_mq.consumer.message import ReceivedMessage

__all__ = ["JsonLinesWriter", "to_json_line"]


def to_json_line(message: ReceivedMessage) -> str:
    """One JSON object on one line, without the trailing newline.

    ``body`` is the plaintext as text when it is valid UTF-8; otherwise it is
    base64 and ``"body_encoding": "base64"`` says so.
    """
    record: dict[str, Any] = {"message_id": message.message_id}
    try:
        record["body"] = message.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body"] = base64.b64encode(message.body).decode("ascii")
        record["body_encoding"] = "base64"
    meta = message.properties
    record["timestamp"] = meta.timestamp
    record["content_type"] = meta.content_type
    if meta.content_encoding is not None:
        record["content_encoding"] = meta.content_encoding
    if meta.type is not None:
        record["type"] = meta.type
    record["context"] = dict(message.context)
    record["key_id"] = message.key_id
    record["redelivered"] = message.redelivered
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class JsonLinesWriter:
    """A handler that writes each message as a JSON line to ``stream``.

    Each line is flushed before the handler returns, so a message is on its
    way out before it is acknowledged. A failed write (a closed pipe, a full
    disk) fails the handler, so the message is delivered again, and calls
    ``on_error`` — the CLI stops the consumer there rather than push every
    following message into quarantine through an output that is gone.
    """

    def __init__(
        self, stream: IO[str], on_error: Callable[[], None] | None = None
    ) -> None:
        self._stream = stream
        self.on_error = on_error
        self.written = 0
        self.failed = False

    def __call__(self, message: ReceivedMessage) -> None:
        """Write ``message``; raises OSError when the stream fails."""
        try:
            self._stream.write(to_json_line(message) + "\n")
            self._stream.flush()
        except OSError:
            self.failed = True
            if self.on_error is not None:
                self.on_error()
            raise
        self.written += 1
