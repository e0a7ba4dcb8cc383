"""What a stage's handler returns, and the message ids its outputs get.

An output's message_id is derived from the input's message_id and the
output's place among the handler's results (unless the handler names one):
when a crash makes the stage handle an input again, the outputs it
publishes again carry the same ids, so that a downstream consumer's
de-duplication (``dedup_window``) recognises them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envelope_mq.shared.errors import ConfigError

__all__ = ["StageOutput", "output_message_id", "outputs_of"]

# Fixed forever: changing it would change every derived id (and so defeat
# de-duplication across an upgrade).
_NAMESPACE = uuid.UUID("6f1e0c52-5a8e-4b8e-9d0a-3c1f2d7b9e41")
_NAMESPACE_BYTES = _NAMESPACE.bytes


@dataclass(frozen=True, slots=True)
class StageOutput:
    """One message for a stage to seal under its own key and publish.

    ``routing_key`` defaults to the stage's output binding; ``message_id`` to
    one derived from the input's (see :func:`output_message_id`). A handler may
    return plain ``bytes`` instead, for an output with every default.
    """

    body: bytes = field(repr=False)
    routing_key: str | None = None
    message_id: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    type: str | None = None  # the AMQP property's own name


def output_message_id(key_id: str, input_message_id: str, index: int) -> str:
    """The id of output ``index`` of input ``input_message_id``, under ``key_id``.

    The same three values give the same id: a handler run again after a crash
    publishes its outputs again under the same ids.
    """
    # uuid.uuid5, written out: the same value at a third of the cost (one per
    # output, on the stage's hot path).
    name = f"{key_id}\n{input_message_id}\n{index}".encode()
    raw = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16]
    )
    raw[6] = raw[6] & 0x0F | 0x50  # version 5
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def outputs_of(result: object) -> list[StageOutput]:
    """A handler's return value as a list of outputs (None: no output).

    Raises ConfigError for anything else than None, bytes, a StageOutput or an
    iterable of them: a handler bug, treated like a handler error.
    """
    if result is None:
        return []
    if isinstance(result, bytes | StageOutput):
        return [_one(result)]
    if isinstance(result, str | Mapping) or not isinstance(result, Iterable):
        raise ConfigError(
            "a stage handler returns None, bytes, a StageOutput or an iterable "
            f"of them, not {type(result).__name__}"
        )
    return [_one(item) for item in result]


def _one(item: object) -> StageOutput:
    if isinstance(item, StageOutput):
        return item
    if isinstance(item, bytes):
        return StageOutput(item)
    raise ConfigError(
        f"a stage output is bytes or a StageOutput, not {type(item).__name__}"
    )
