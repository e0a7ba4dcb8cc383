"""The ``envelope`` kombu serializer: seal on encode, open on decode.

The inner serializer (json unless the user opts in to another) turns the
Celery payload into bytes; the :class:`~envelope_mq.shared.envelope.Sealer`
seals them under a data key from the cached KMS source, and the result is
framed (framing.py) because a serializer cannot reach the AMQP headers.

Task messages are bound to the Celery headers that say what runs: the
``before_task_publish`` hook (signals.py) tells the encoder the task's id and
name just before kombu serializes the body in the same thread, and they are
sealed as the envelope's ``message_id`` and ``type``. The worker's gate
(worker.py) refuses a task whose headers say otherwise.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass

from kombu.serialization import dumps, loads, registry

from envelope_mq.celery.framing import frame, unframe
from envelope_mq.consumer.keypolicy import KeyPolicy, KeyResolver
from envelope_mq.consumer.message import Delivery, ReceivedMessage
from envelope_mq.consumer.outcome import Outcome, Reason, Verdict, admit
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import ConfigError, DecryptionError

__all__ = [
    "CONTENT_TYPE",
    "NAME",
    "TASK_TYPE_PREFIX",
    "Binding",
    "EnvelopeCodec",
    "bind_next",
]

NAME = "envelope"
CONTENT_TYPE = "application/x-envelope-mq"
CONTENT_ENCODING = "binary"
# The sealed ``type`` of a task message: this prefix and the task's name.
TASK_TYPE_PREFIX = "celery.task:"


@dataclass(frozen=True)
class Binding:
    """The Celery headers a task message is sealed to."""

    task_id: str
    task_name: str


# Set by before_task_publish, taken by the next encode in the same context.
_next_binding: contextvars.ContextVar[Binding | None] = contextvars.ContextVar(
    "envelope_mq_celery_binding", default=None
)


def bind_next(binding: Binding | None) -> None:
    """Seal the next payload encoded in this context to ``binding``."""
    _next_binding.set(binding)


def _refused(outcome: Outcome) -> DecryptionError:
    """The one DecryptionError, the outcome's reason chained (never the plaintext)."""
    error = DecryptionError()
    error.__cause__ = ValueError(f"{outcome.verdict.value}: {outcome.reason or ''}")
    return error


class EnvelopeCodec:
    """Seals and opens Celery payloads; kombu calls :meth:`encode`/:meth:`decode`."""

    def __init__(
        self,
        sealer: Sealer,
        opener: Opener,
        *,
        inner: str = "json",
        policy: ContextPolicy | None = None,
        key_policy: KeyPolicy | None = None,
        key_resolver: KeyResolver | None = None,
    ) -> None:
        self._sealer = sealer
        self._opener = opener
        self._inner = inner
        self._inner_type: str | None = None
        self._policy = policy or ContextPolicy()
        self._key_policy = key_policy or KeyPolicy()
        self._key_resolver = key_resolver

    def __repr__(self) -> str:
        return f"EnvelopeCodec({self._sealer!r}, inner={self._inner!r})"

    @property
    def inner(self) -> str:
        """The name of the serializer that turns payloads into plaintext."""
        return self._inner

    def encode(self, payload: object) -> bytes:
        """Serialize ``payload`` with the inner serializer, seal and frame it."""
        content_type, content_encoding, data = dumps(payload, serializer=self._inner)
        self._inner_type = content_type
        plaintext = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        binding = _next_binding.get()
        if binding is not None:
            _next_binding.set(None)  # one binding, one message
            message_id, type_ = binding.task_id, TASK_TYPE_PREFIX + binding.task_name
        else:
            message_id, type_ = str(uuid.uuid4()), None
        meta = MessageMeta(
            message_id, int(time.time()), content_type, content_encoding, type_
        )
        return frame(self._sealer.seal(plaintext, meta))

    def admit(self, body: bytes) -> ReceivedMessage | Outcome:
        """Open a framed body under the policies, as the consumer's admit() does."""
        try:
            parts = unframe(body)
        except DecryptionError:
            return Outcome(Verdict.QUARANTINE, Reason.MALFORMED)
        if self._key_policy and not self._key_policy.resolved:
            if self._key_resolver is None:
                raise ConfigError(
                    "an allowed-key policy needs a KMS that can DescribeKey"
                )
            self._key_policy = self._key_policy.resolve(self._key_resolver)
        meta = parts.meta
        delivery = Delivery(
            parts.body,
            parts.headers,
            meta.message_id,
            meta.timestamp,
            meta.content_type,
            meta.content_encoding,
            meta.type,
            redelivered=False,
            delivery_tag=0,
        )
        return admit(
            delivery, self._opener, policy=self._policy, key_policy=self._key_policy
        )

    def payload(self, opened: ReceivedMessage) -> object:
        """Deserialize an opened message with the inner serializer, and only it."""
        expected = self._inner_content_type()
        if opened.content_type != expected:
            raise _refused(
                Outcome(Verdict.QUARANTINE, Reason.MALFORMED, detail="inner serializer")
            )
        return loads(
            opened.body,
            opened.content_type,
            opened.properties.content_encoding,
            accept={expected},
        )

    def decode(self, body: bytes) -> object:
        """Open a framed body and deserialize it; raise DecryptionError otherwise."""
        admitted = self.admit(body)
        if isinstance(admitted, Outcome):
            raise _refused(admitted)
        return self.payload(admitted)

    def _inner_content_type(self) -> str:
        if self._inner_type is None:
            self._inner_type = registry.name_to_type[self._inner]
        return self._inner_type
