"""The thin pika boundary shared by producer and consumer.

Broker URLs become pika connection parameters here, the exchange and queues are
declared here, and pika's exceptions become :mod:`~envelope_mq.shared.errors`
here. Only this
module and the producer/consumer transport modules touch pika types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pika
import pika.exceptions
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    MessageNackedError,
    MessageUnroutableError,
)

__all__ = [
    "DEFAULT_EXCHANGE",
    "QUARANTINE_SUFFIX",
    "QUEUE_TYPES",
    "ConnectionOptions",
    "QueueType",
    "Topology",
    "broker_errors",
    "connect_blocking",
    "connection_parameters",
    "describe_error",
    "redact_url",
    "split_urls",
    "translate_error",
]

DEFAULT_EXCHANGE = "envelope-mq"
QUARANTINE_SUFFIX = ".quarantine"

QueueType = Literal["classic", "quorum", "stream"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum", "stream")


@dataclass(frozen=True)
class ConnectionOptions:
    """Connection tuning applied to every URL unless its query string says otherwise."""

    heartbeat: int = 30
    # A broker under a resource alarm blocks publishers; give up on the
    # connection after this long so the reconnect logic can try another node.
    blocked_connection_timeout: float = 60.0
    connection_attempts: int = 3
    retry_delay: float = 1.0
    socket_timeout: float = 10.0
    connection_name: str = "envelope-mq"


def split_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Split a comma-separated ``RABBITMQ_URL`` (or a list of them) into URLs."""
    parts = [urls] if isinstance(urls, str) else list(urls)
    result = tuple(u.strip() for part in parts for u in part.split(",") if u.strip())
    if not result:
        raise ConfigError("RABBITMQ_URL must name at least one broker")
    return result


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def connection_parameters(
    urls: str | Sequence[str], options: ConnectionOptions | None = None
) -> list[pika.URLParameters]:
    """Parse one or several broker URLs into pika parameters, in failover order."""
    opts = options or ConnectionOptions()
    return [_parameters(url, opts) for url in split_urls(urls)]


def _parameters(url: str, opts: ConnectionOptions) -> pika.URLParameters:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(
            f"broker URL must start with amqp:// or amqps://: {redact_url(url)}"
        )
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        # pika's message may quote the URL, password included: do not chain text.
        raise ConfigError(f"invalid broker URL: {redact_url(url)}") from exc
    query = parse_qs(parts.query)
    defaults: dict[str, object] = {
        "heartbeat": opts.heartbeat,
        "blocked_connection_timeout": opts.blocked_connection_timeout,
        "connection_attempts": opts.connection_attempts,
        "retry_delay": opts.retry_delay,
        "socket_timeout": opts.socket_timeout,
    }
    for name, value in defaults.items():
        if name not in query:  # the URL's own query string wins
            setattr(params, name, value)
    if "client_properties" not in query:
        params.client_properties = {"connection_name": opts.connection_name}
    return params


def connect_blocking(
    urls: str | Sequence[str],
    options: ConnectionOptions | None = None,
    *,
    connection_class: type[pika.SelectConnection] | None = None,
) -> pika.BlockingConnection:
    """Open a blocking connection to the first broker of the list that answers.

    ``connection_class`` replaces pika's ``SelectConnection`` underneath (the
    consumer's decodes content headers itself).

    Raises BrokerUnavailableError when none does, including when a connection
    is reset while being set up.
    """
    params = connection_parameters(urls, options)
    where = ", ".join(redact_url(u) for u in split_urls(urls))
    with broker_errors(f"cannot connect to RabbitMQ at {where}"):
        try:
            return pika.BlockingConnection(
                params,
                _impl_class=connection_class,
            )
        except ValueError as exc:
            # pika raises ValueError out of its I/O loop when a connection is
            # reset during set-up ("Expected connected socket, but
            # getpeername() failed"); the parameters were checked above, so
            # this is a lost connection like any other, and callers reconnect.
            raise BrokerUnavailableError(
                f"cannot connect to RabbitMQ at {where}: the connection was "
                "reset while being set up"
            ) from exc


@dataclass(frozen=True)
class Topology:
    """The exchange, the queue bound to it and its quarantine queue.

    Declared idempotently by both sides, so whichever starts first creates it
    and a producer started before any consumer loses nothing.

    A ``stream`` queue keeps what it holds until its retention drops it
    (``x-max-age``, ``x-max-length-bytes`` in ``queue_arguments``): its
    quarantine queue is a classic queue instead, declared with
    ``quarantine_arguments``, since quarantined copies are read once and
    acknowledged. ``quarantine_arguments`` left None means ``queue_arguments``
    for the other types.
    """

    queue: str
    exchange: str = DEFAULT_EXCHANGE
    routing_key: str | None = None
    queue_type: QueueType = "classic"
    # Extra queue arguments for both queues, e.g. {"x-expires": 60000} in tests.
    queue_arguments: Mapping[str, Any] = field(default_factory=dict)
    exchange_auto_delete: bool = False
    quarantine_arguments: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.queue:
            raise ConfigError("queue name must not be empty")
        if not self.exchange:
            raise ConfigError("exchange name must not be empty")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(
                f"queue type must be classic, quorum or stream: {self.queue_type}"
            )

    @property
    def binding_key(self) -> str:
        """The routing key the queue is bound with (the queue name by default)."""
        return self.routing_key if self.routing_key is not None else self.queue

    @property
    def quarantine_queue(self) -> str:
        """Name of the queue that receives messages which cannot be opened."""
        return self.queue + QUARANTINE_SUFFIX

    @property
    def is_stream(self) -> bool:
        """Whether the queue is a RabbitMQ stream (read by offset, never emptied)."""
        return self.queue_type == "stream"

    def queue_declare_arguments(self) -> dict[str, Any]:
        """The ``arguments`` table the queue is declared with."""
        return {"x-queue-type": self.queue_type, **self.queue_arguments}

    def quarantine_declare_arguments(self) -> dict[str, Any]:
        """The ``arguments`` table the quarantine queue is declared with."""
        if self.is_stream:
            return {"x-queue-type": "classic", **(self.quarantine_arguments or {})}
        if self.quarantine_arguments is None:
            return self.queue_declare_arguments()
        return {"x-queue-type": self.queue_type, **self.quarantine_arguments}

    def declare(self, channel: Any) -> None:
        """Declare everything on a ``BlockingChannel``; raises BrokerError."""
        with broker_errors(f"declare queue {self.queue!r}"):
            for method, kwargs in self._steps():
                getattr(channel, method)(**kwargs)

    def declare_async(self, channel: Any, on_done: Callable[[], None]) -> None:
        """Declare everything on an async pika ``Channel``, then call ``on_done``.

        A refusal (say, the queue exists with other arguments) closes the
        channel; the caller's channel-close callback sees it.
        """
        steps = list(self._steps())

        def next_step(_frame: object = None) -> None:
            if not steps:
                on_done()
                return
            method, kwargs = steps.pop(0)
            getattr(channel, method)(callback=next_step, **kwargs)

        next_step()

    def _steps(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield (
            "exchange_declare",
            {
                "exchange": self.exchange,
                "exchange_type": "topic",
                "durable": True,
                "auto_delete": self.exchange_auto_delete,
            },
        )
        for name, arguments in (
            (self.queue, self.queue_declare_arguments()),
            (self.quarantine_queue, self.quarantine_declare_arguments()),
        ):
            yield (
                "queue_declare",
                {"queue": name, "durable": True, "arguments": arguments},
            )
        yield (
            "queue_bind",
            {
                "queue": self.queue,
                "exchange": self.exchange,
                "routing_key": self.binding_key,
            },
        )


def translate_error(exc: BaseException, doing: str) -> BrokerError:
    """Map a pika (or socket) exception to the matching BrokerError, unraised."""
    if isinstance(exc, pika.exceptions.UnroutableError):
        return MessageUnroutableError(f"{doing}: the message matched no queue")
    if isinstance(exc, pika.exceptions.NackError):
        return MessageNackedError(f"{doing}: the broker nacked the message")
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return BrokerError(f"{doing}: {exc.reply_code} {exc.reply_text}")
    detail = describe_error(exc)
    if isinstance(exc, pika.exceptions.AMQPConnectionError | OSError):
        return BrokerUnavailableError(f"{doing}: {detail}")
    return BrokerError(f"{doing}: {detail}")


def describe_error(exc: BaseException) -> str:
    """``Type: text`` of the cause under pika's wrappers, for one log line."""
    cause = _root_cause(exc)
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The socket error under pika's wrappers: an outage says why, in one line.

    pika wraps a refused connection as AMQPConnectionError(AMQPConnection-
    WorkflowFailed(... AMQPConnectorSocketConnectError(ConnectionRefusedError)));
    none of these texts carries a URL or a password.
    """
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        attempts = getattr(exc, "exceptions", None)  # a workflow: the last try
        wrapped = getattr(exc, "exception", None)  # one phase of the workflow
        if isinstance(attempts, list | tuple) and attempts:
            exc = attempts[-1]
        elif isinstance(wrapped, BaseException):
            exc = wrapped
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    return exc


@contextlib.contextmanager
def broker_errors(doing: str) -> Iterator[None]:
    """Translate pika and socket exceptions raised inside the block, chained."""
    try:
        yield
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise translate_error(exc, doing) from exc
