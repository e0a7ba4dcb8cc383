"""``envelope-mq produce``: seal and publish messages (arguments, stdin, generated)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, BinaryIO

from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import redact_url
from envelope_mq.shared.cli_args import (
    add_topology_arguments,
    positive_float,
    topology_from_args,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError, MessagingError
from envelope_mq.shared.observability import (
    NULL_METRICS,
    Observability,
    add_observability_arguments,
    observability,
)

__all__ = ["register", "run"]

_PROG = "envelope-mq produce"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``produce`` subcommand."""
    parser = subparsers.add_parser(
        "produce",
        help="encrypt and publish messages",
        description=(
            "Encrypt messages with a KMS data key and publish them with publisher "
            "confirms. Messages come from the arguments, else from --count, else "
            "one per line from stdin. Configuration: RABBITMQ_URL, KMS_ENDPOINT, "
            "KMS_KEY_ID, ALIBABA_CLOUD_* (see the README)."
        ),
    )
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="message text")
    add_topology_arguments(
        parser,
        queue_help="queue to declare and bind (and route to)",
        routing_key_help="routing key (default: the queue name)",
        exchange_help="topic exchange (%(default)s)",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="KMS encryption context entry (repeatable)",
    )
    parser.add_argument("--key-id", help="KMS master key id or alias (KMS_KEY_ID)")
    parser.add_argument("--content-type", help="content_type of the plaintext")
    parser.add_argument("--count", type=int, help="publish N generated messages")
    parser.add_argument(
        "--size", type=int, default=100, help="bytes per generated message (100)"
    )
    parser.add_argument(
        "--linger",
        type=positive_float,
        metavar="SECONDS",
        help=(
            "with --metrics-port: keep serving /metrics, /healthz and /readyz for "
            "SECONDS after the last confirm, so that a scraper sees the final "
            "counts (default: exit at once)"
        ),
    )
    add_observability_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Publish every message, wait for every confirm, print a summary to stderr."""
    try:
        with observability(args, _PROG) as observed:
            try:
                status = _produce(args, Settings.from_env(), sys.stdin.buffer, observed)
            except MessagingError as exc:
                observed.say(
                    f"{_PROG}: error: {exc}", event="command_failed", level="error"
                )
                return 1
            if observed.server is not None and args.linger:
                observed.say(
                    f"{_PROG}: serving metrics for {args.linger:g} s more",
                    event="metrics_linger",
                    seconds=args.linger,
                )
                time.sleep(args.linger)
            return status
    except MessagingError as exc:  # before logging was set up
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1


def _produce(
    args: argparse.Namespace,
    settings: Settings,
    stdin: BinaryIO,
    observed: Observability | None = None,
) -> int:
    observed = observed or Observability(NULL_METRICS)
    context = parse_context(args.context)
    topology = topology_from_args(args) if args.queue else None
    if topology is None and not args.routing_key:
        raise ConfigError("give --queue NAME or --routing-key KEY")
    messages = _messages(args, stdin)
    started = time.perf_counter()
    count = size = 0
    failures: list[BaseException] = []
    with EncryptedPublisher.from_settings(
        settings,
        topology=topology,
        exchange=None if topology else args.exchange,
        key_id=args.key_id,
        context=context,
        metrics=observed.metrics,
    ) as publisher:
        for body in messages:
            future = publisher.publish(
                body, routing_key=args.routing_key, content_type=args.content_type
            )
            future.add_done_callback(_collect(failures))
            count += 1
            size += len(body)
        publisher.flush()
    elapsed = max(time.perf_counter() - started, 1e-9)
    where = ", ".join(redact_url(u) for u in settings.rabbitmq_urls)
    route = args.routing_key or (topology.binding_key if topology else "")
    confirmed = count - len(failures)
    observed.say(
        f"{_PROG}: {confirmed} of {count} message(s), {size} bytes, confirmed by "
        f"{where} (exchange {publisher.exchange!r}, routing key {route!r}) in "
        f"{elapsed:.2f} s ({confirmed / elapsed:.0f} msg/s)",
        event="produce_finished",
        count=confirmed,
        exchange=publisher.exchange,
        routing_key=route,
        seconds=round(elapsed, 3),
    )
    if failures:
        observed.say(
            f"{_PROG}: error: {failures[0]}", event="publish_failed", level="error"
        )
        return 1
    return 0


def _collect(failures: list[BaseException]) -> Callable[[Future[str]], None]:
    def done(future: Future[str]) -> None:
        error = future.exception()
        if error is not None:
            failures.append(error)  # list.append is atomic: safe from the I/O thread

    return done


def parse_context(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["tenant=a", "app=b"]`` into ``{"tenant": "a", "app": "b"}``."""
    context: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--context takes KEY=VALUE, got {item!r}")
        context[key] = value
    return context


def _messages(args: argparse.Namespace, stdin: BinaryIO) -> Iterator[bytes]:
    if args.messages:
        return (m.encode("utf-8") for m in args.messages)
    if args.count is not None:
        if args.count < 0 or args.size < 0:
            raise ConfigError("--count and --size must not be negative")
        return generated(args.count, args.size)
    # Streamed line by line, so `... | envelope-mq produce` publishes as lines come.
    lines = (line.rstrip(b"\r\n") for line in stdin)
    return (line for line in lines if line)


def generated(count: int, size: int) -> Iterator[bytes]:
    """``count`` distinct printable messages of exactly ``size`` bytes."""
    filler = b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1)
    for n in range(count):
        label = f"message {n} ".encode()
        yield (label + filler)[:size]
