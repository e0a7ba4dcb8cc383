"""Find or start a RabbitMQ for tests and demos, in a fixed order.

1. ``RABBITMQ_URL`` when set (one URL or a comma-separated failover list);
2. a broker on 127.0.0.1:5672 when one answers the AMQP protocol header;
3. a RabbitMQ container (``EMQ_RABBITMQ_IMAGE`` or a pinned image, labelled for
   clean-up, see :mod:`envelope_mq.testing.containers`) when a Docker API answers;
4. a private ``rabbitmq-server`` node when the binary is installed;
5. otherwise :class:`NoBrokerError`, whose text says how to get one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from envelope_mq.testing.containers import (
    OFFICIAL_RABBITMQ_IMAGE,
    RabbitContainer,
    rabbitmq_image,
)
from envelope_mq.testing.probe import amqp_answers, docker_answers
from envelope_mq.testing.rabbitmq_node import (
    RabbitNode,
    RabbitNodeError,
    rabbitmq_server_unavailable_reason,
)

__all__ = [
    "LOCAL_URL",
    "PINNED_IMAGE",
    "Broker",
    "BrokerKind",
    "NoBrokerError",
    "start_broker",
]

# Pinned, never :latest: a new RabbitMQ release must not change a test run.
PINNED_IMAGE = OFFICIAL_RABBITMQ_IMAGE
LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

BrokerKind = Literal["env", "local", "container", "node"]

HOW_TO_GET_ONE = (
    "no RabbitMQ available: set RABBITMQ_URL, run one on 127.0.0.1:5672 "
    "(apt-get install rabbitmq-server), or start a Docker engine"
)


class NoBrokerError(RuntimeError):
    """No broker could be found or started; the text says why and what to do."""


@dataclass
class Broker:
    """A broker to use, and how to let go of it."""

    urls: tuple[str, ...]
    kind: BrokerKind
    node: RabbitNode | None = None
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The first (or only) URL."""
        return self.urls[0]

    def close(self) -> None:
        """Stop the container or node if we started one; idempotent."""
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_broker(
    environ: Mapping[str, str], *, image: str | None = None, allow_start: bool = True
) -> Broker:
    """Return the first broker available in the documented order.

    The container's image is ``image``, else ``EMQ_RABBITMQ_IMAGE``, else
    :data:`PINNED_IMAGE`.
    ``allow_start=False`` stops after step 2 (use only what is already running).
    Raises NoBrokerError with every reason collected on the way.
    """
    configured = environ.get("RABBITMQ_URL", "").strip()
    if configured:
        urls = tuple(u.strip() for u in configured.split(",") if u.strip())
        return Broker(urls=urls, kind="env")
    if amqp_answers("127.0.0.1", 5672):
        return Broker(urls=(LOCAL_URL,), kind="local")
    reasons = ["nothing answers AMQP on 127.0.0.1:5672"]
    if not allow_start:
        raise NoBrokerError(f"{HOW_TO_GET_ONE} ({'; '.join(reasons)})")
    if docker_answers(environ=environ):
        try:
            return _start_container(image or rabbitmq_image(environ))
        except Exception as exc:  # any Docker failure falls through to the next way
            reasons.append(f"testcontainers failed: {type(exc).__name__}: {exc}")
    else:
        reasons.append("no Docker engine answers")
    unavailable = rabbitmq_server_unavailable_reason()
    if unavailable is None:
        node = RabbitNode()
        try:
            node.start()
        except RabbitNodeError as exc:
            node.close()
            reasons.append(str(exc))
        else:
            return Broker(urls=(node.url,), kind="node", node=node, _close=node.close)
    else:
        reasons.append(unavailable)
    raise NoBrokerError(f"{HOW_TO_GET_ONE} ({'; '.join(reasons)})")


def _start_container(image: str) -> Broker:
    # Labelled with this process as owner and on a loopback port: reaped like
    # every test container (envelope_mq.testing.containers), Ryuk or not.
    container = RabbitContainer(image)
    container.start()
    return Broker(urls=(container.url,), kind="container", _close=container.close)
