"""The one error tree of envelope-mq.

Every exception our code raises on purpose derives from :class:`MessagingError`.
Third-party exceptions (pika, the Alibaba SDKs, cryptography) are translated at
the module that wraps the dependency and chained with ``raise ... from exc``;
they never cross a public signature.

    MessagingError
     ├── ConfigError                  bad or missing configuration
     ├── KmsError                     a KMS call failed
     │    ├── KmsUnavailableError     transient: refused, timeout, HTTP 5xx, Throttling
     │    └── KmsRequestError         permanent: Forbidden.*, InvalidParameter,
     │         │                      Rejected.*
     │         └── KmsCallerError     the caller's own fault: signature, AccessKey,
     │                                clock skew, security token (no message's)
     ├── DecryptionError              a message cannot be opened (always the same text)
     │    ├── MalformedMessageError   refused before any KMS call: headers, body size
     │    └── KeyMismatchError        it opened, but not under the key it names
     ├── SealingError                 a message cannot be sealed (bad input)
     └── BrokerError                  RabbitMQ failed us
          ├── BrokerUnavailableError  cannot connect, or the connection was lost
          └── PublishNotConfirmedError the broker did not take a message
               ├── MessageNackedError      the broker nacked it
               └── MessageUnroutableError  mandatory routing: no queue was bound

The consumer treats the KMS branches differently: a transient failure keeps
the message unacknowledged and retries; a refusal because of the message
quarantines it; a refusal because of the caller (KmsCallerError) stops the
consumer and leaves every message in the queue.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "DecryptionError",
    "KeyMismatchError",
    "KmsCallerError",
    "KmsError",
    "KmsRequestError",
    "KmsUnavailableError",
    "MalformedMessageError",
    "MessageNackedError",
    "MessageUnroutableError",
    "MessagingError",
    "PublishNotConfirmedError",
    "SealingError",
]


class MessagingError(Exception):
    """Root of every error envelope-mq raises."""


class ConfigError(MessagingError):
    """Configuration is missing or invalid."""


class KmsError(MessagingError):
    """A KMS call failed.

    ``code`` and ``request_id`` are the service's own (``Forbidden.KeyNotFound``,
    ``Throttling``...), or a local code such as ``SDK.Timeout`` when the request
    never got an answer. Neither ever contains key material.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        request_id: str = "",
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.http_status = http_status


class KmsUnavailableError(KmsError):
    """KMS could not answer now; the same call may succeed later."""


class KmsRequestError(KmsError):
    """KMS refused the request; repeating it will not help."""


class KmsCallerError(KmsRequestError):
    """KMS refused the caller, whatever the request: no message is at fault.

    A wrong AccessKey secret, an unknown AccessKeyId, a clock too far off, a
    bad or expired security token: every call fails alike until the operator
    fixes the configuration. ``cause`` says what most likely went wrong, in
    an operator's words.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        request_id: str = "",
        http_status: int | None = None,
        cause: str = "",
    ) -> None:
        super().__init__(
            message, code=code, request_id=request_id, http_status=http_status
        )
        self.cause = cause


class DecryptionError(MessagingError):
    """A message could not be opened.

    Every cause (bad tag, wrong associated data, truncated body, unknown version
    or algorithm, a header of the wrong type or size) gives the same text, so the
    error is no oracle. The cause may be chained for debugging; it is never part
    of the message.
    """

    MESSAGE = "message could not be decrypted"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class MalformedMessageError(DecryptionError):
    """A message refused on its shape alone, before any KMS call.

    Missing or mistyped envelope headers, an unknown version, a body shorter
    than nonce + tag, an unusable bound property: nothing was unwrapped and
    nothing authenticated, so the consumer quarantines it as ``malformed``,
    not ``undecryptable``. Same text as every DecryptionError (no oracle).
    """


class KeyMismatchError(DecryptionError):
    """A message opened, but its x-emq-key-id is not the key KMS unwrapped it with.

    Whoever sealed it held the master key KMS named (``verified``), and wrote
    another (``claimed``) in the header: a spoofed sender. Key ids are names,
    not secrets, so both are kept for the log.
    """

    MESSAGE = "message names another master key than the one KMS unwrapped it with"

    def __init__(self, claimed: str = "", verified: str = "") -> None:
        MessagingError.__init__(self, self.MESSAGE)
        self.claimed = claimed
        self.verified = verified


class SealingError(MessagingError):
    """A message could not be sealed (invalid input or an exhausted data key)."""


class BrokerError(MessagingError):
    """RabbitMQ failed us."""


class BrokerUnavailableError(BrokerError):
    """No broker could be reached, or the connection was lost."""


class PublishNotConfirmedError(BrokerError):
    """The broker did not take responsibility for a published message."""

    def __init__(self, message: str, *, message_id: str = "") -> None:
        super().__init__(message)
        self.message_id = message_id


class MessageNackedError(PublishNotConfirmedError):
    """The broker answered a publish with basic.nack."""


class MessageUnroutableError(PublishNotConfirmedError):
    """A mandatory publish matched no queue and came back with basic.return."""
