"""``envelope-mq consume`` and ``envelope-mq quarantine-replay``.

Entrypoints only: parse, read Settings from the environment once, wire, and
turn a MessagingError into exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
from envelope_mq.consumer.freshness import DEFAULT_MAX_SKEW
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.output import JsonLinesWriter
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.replay import replay_quarantine
from envelope_mq.consumer.signals import stop_on_signals
from envelope_mq.consumer.streams import (
    DEFAULT_COMMIT_EVERY,
    OffsetFile,
    OffsetSpec,
    StreamCursor,
)
from envelope_mq.consumer.worker import EncryptedConsumer
from envelope_mq.shared.amqp import redact_url
from envelope_mq.shared.cli_args import (
    add_region_arguments,
    add_topology_arguments,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    settings_with_regions,
    topology_from_args,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import (
    ConfigError,
    KmsUnavailableError,
    MessagingError,
)
from envelope_mq.shared.kms import KmsClient, kms_from_settings
from envelope_mq.shared.kms.credentials import CHAIN_HELP
from envelope_mq.shared.observability import add_observability_arguments, observability
from envelope_mq.shared.observability.metrics import KMS_COMPONENT
from envelope_mq.shared.observability.service import Observability
from envelope_mq.shared.regions import consumer_regions, region_clients

__all__ = ["add_stream_arguments", "register", "register_replay", "stream_cursor"]

_EPILOG = (
    "Broker and KMS come from RABBITMQ_URL, KMS_ENDPOINT (or KMS_INSTANCE_ENDPOINT) "
    "and ALIBABA_CLOUD_* (see the README). " + CHAIN_HELP
)


def _add_topology_arguments(parser: argparse.ArgumentParser) -> None:
    add_topology_arguments(
        parser,
        queue_required=True,
        queue_help="queue to consume (declared)",
        exchange_help=(
            "durable topic exchange the queue is bound to (default: %(default)s)"
        ),
        routing_key_help="binding key of the queue (default: the queue name)",
        queue_type_help=(
            "type of the queue and its quarantine queue (default: %(default)s)"
        ),
        exchange_first=True,
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``consume`` subcommand."""
    parser = subparsers.add_parser(
        "consume",
        help="decrypt messages from a queue and print them as JSON lines",
        description=(
            "Consume a queue, decrypt each message and write it as one JSON line "
            "(body, message_id, timestamp, content_type, context...). Messages "
            "that cannot be opened go to <queue>.quarantine with a reason header; "
            "SIGTERM or Ctrl-C stops gracefully."
        ),
        epilog=_EPILOG,
    )
    _add_topology_arguments(parser)
    parser.add_argument("--count", type=positive_int, help="stop after N messages")
    parser.add_argument(
        "--output", "-o", type=Path, help="append JSON lines to FILE (default: stdout)"
    )
    parser.add_argument(
        "--prefetch",
        type=positive_int,
        default=1000,
        help="unacknowledged messages in flight (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "accept only messages whose encryption context has KEY=VALUE; repeat "
            "to allow more values or constrain more keys; others are quarantined"
        ),
    )
    parser.add_argument(
        "--allow-key",
        action="append",
        default=[],
        metavar="KEY[@K=V,...]",
        help=(
            "accept only messages that KMS unwrapped with master key KEY (key id, "
            "alias/NAME or ARN; resolved once at start by DescribeKey), and, "
            "with @K=V,..., only for those contexts; repeat for more keys or "
            "alternatives; others are quarantined (key-denied, context-denied)"
        ),
    )
    parser.add_argument(
        "--max-deliveries",
        type=positive_int,
        default=5,
        help="deliveries before a failing message is quarantined (default: 5)",
    )
    # Replay protection (consumer/freshness.py).
    parser.add_argument(
        "--max-age",
        type=positive_float,
        metavar="SECONDS",
        help="quarantine (reason expired) messages whose authenticated timestamp "
        "is older than this",
    )
    parser.add_argument(
        "--max-decrypt-rate",
        type=positive_float,
        default=DEFAULT_DECRYPT_RATE,
        metavar="N",
        help="at most N KMS Decrypt calls per second for data keys not cached; "
        "messages over it wait, unacknowledged (default: %(default)s)",
    )
    parser.add_argument(
        "--max-skew",
        type=non_negative_float,
        default=DEFAULT_MAX_SKEW,
        metavar="SECONDS",
        help="with --max-age, also quarantine (reason expired) messages stamped "
        "more than this far in the future (default: %(default)s)",
    )
    parser.add_argument(
        "--dedup-window",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="remember the last N messages handled (by sender key, context and "
        "message id) and drop repeats (default: off)",
    )
    add_stream_arguments(parser)
    add_region_arguments(parser, writer=False)
    add_observability_arguments(parser)
    parser.set_defaults(run=run_consume)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --offset, --offset-file and --commit-every (see :func:`stream_cursor`)."""
    group = parser.add_argument_group(
        "streams (--queue-type stream)", "see docs/streams.md"
    )
    group.add_argument(
        "--offset",
        type=_offset_spec,
        metavar="SPEC",
        help="where to start reading the stream the first time: first, last, "
        "next, an offset, an ISO 8601 time or @SECONDS (default: next); with "
        "--offset-file holding a position, the consumer resumes after it instead",
    )
    group.add_argument(
        "--offset-file",
        type=Path,
        metavar="PATH",
        help="keep this consumer's stream position in PATH (one consumer per "
        "file), replaced atomically; a restart resumes after it",
    )
    group.add_argument(
        "--commit-every",
        type=positive_int,
        default=DEFAULT_COMMIT_EVERY,
        metavar="N",
        help="write the position after every N messages (and when idle or "
        "stopping): the most a crash makes the next run read again "
        "(default: %(default)s)",
    )


def _offset_spec(text: str) -> OffsetSpec:
    try:
        return OffsetSpec.parse(text)
    except MessagingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def stream_cursor(args: argparse.Namespace) -> StreamCursor | None:
    """The stream position the arguments describe (None unless a stream)."""
    if args.queue_type != "stream":
        if args.offset is not None or args.offset_file is not None:
            raise ConfigError("--offset and --offset-file need --queue-type stream")
        return None
    return StreamCursor(
        args.offset,
        None if args.offset_file is None else OffsetFile(args.offset_file),
        commit_every=args.commit_every,
    )


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("a", encoding="utf-8") as stream:
        yield stream


def run_consume(args: argparse.Namespace) -> int:
    """Run ``envelope-mq consume``; the exit code."""
    try:
        settings = settings_with_regions(Settings.from_env(), args)
        policy = ContextPolicy.parse(args.allow_context)
        key_policy = KeyPolicy.parse(args.allow_key)
        cursor = stream_cursor(args)
        with (
            observability(args, "envelope-mq consume") as observed,
            _output(args.output) as stream,
        ):
            # Several regions: the consumer makes a client per region and
            # finds out which answer as messages need them.
            regional = len(consumer_regions(settings)) > 1
            kms = None if regional else kms_from_settings(settings)
            try:
                if kms is not None:
                    _check_kms(kms, observed)
                else:
                    _check_regions(settings, observed)
                writer = JsonLinesWriter(stream)
                consumer = EncryptedConsumer.from_settings(
                    settings,
                    topology_from_args(args),
                    writer,
                    provider=kms,
                    prefetch=args.prefetch,
                    max_deliveries=args.max_deliveries,
                    policy=policy,
                    key_policy=key_policy,
                    max_age=args.max_age,
                    max_skew=args.max_skew,
                    max_decrypt_rate=args.max_decrypt_rate,
                    dedup_window=args.dedup_window,
                    metrics=observed.metrics,
                    stream=cursor,
                )
                writer.on_error = consumer.stop
                observed.say(
                    f"envelope-mq consume: consuming {args.queue!r} "
                    f"({args.queue_type}) from "
                    f"{', '.join(redact_url(u) for u in settings.rabbitmq_urls)}; "
                    "SIGTERM or Ctrl-C stops",
                    event="consumer_started",
                    queue=args.queue,
                )
                with stop_on_signals(consumer.stop):
                    stats = consumer.run(count=args.count)
            except MessagingError as exc:
                observed.say(
                    f"envelope-mq consume: {exc}", event="command_failed", level="error"
                )
                return 1
            finally:
                if kms is not None:
                    kms.close()
    except MessagingError as exc:  # before logging was set up
        print(f"envelope-mq consume: {exc}", file=sys.stderr)
        return 1
    quarantined = ", ".join(f"{n} {r}" for r, n in sorted(stats.quarantined.items()))
    observed.say(
        f"envelope-mq consume: {stats.handled} message(s) from {args.queue!r}; "
        f"quarantined: {quarantined or 'none'}; requeued: {stats.requeued}"
        + ("" if cursor is None else f"; stream position: {cursor.position}"),
        event="consumer_stopped",
        queue=args.queue,
        count=stats.handled,
    )
    if writer.failed:
        observed.say(
            "envelope-mq consume: the output failed; stopped",
            event="output_failed",
            level="error",
        )
        return 1
    return 0


def _check_kms(kms: KmsClient, observed: Observability) -> None:
    """Say plainly, at start, when KMS cannot be reached; report not ready.

    The consumer runs anyway: messages wait, unacknowledged, until KMS answers
    (and readiness follows the first answer). Through a proxy the check is
    left to the first call.
    """
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return
    try:
        kms.probe()
    except KmsUnavailableError as exc:
        observed.say(
            f"envelope-mq consume: {exc}; messages wait until KMS answers",
            event="kms_unreachable",
            level="error",
        )
        if observed.health is not None:
            observed.health.set_ready(KMS_COMPONENT, False, str(exc))


def _check_regions(settings: Settings, observed: Observability) -> None:
    """Say at start which KMS regions cannot be reached; not ready if none can.

    Copies in an unreachable region are tried last (shared/regions.py); the
    consumer runs anyway, as with one KMS.
    """
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return
    names = consumer_regions(settings)
    unreachable = []
    with region_clients(settings, names) as clients:
        for name, client in clients.items():
            try:
                client.probe()
            except KmsUnavailableError as exc:
                unreachable.append(name)
                observed.say(
                    f"envelope-mq consume: KMS region {name}: {exc}; "
                    "its copies are tried last",
                    event="kms_unreachable",
                    level="warning",
                    region=name,
                )
    if len(unreachable) == len(names) and observed.health is not None:
        observed.health.set_ready(KMS_COMPONENT, False, "no KMS region can be reached")


def register_replay(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``quarantine-replay`` subcommand."""
    parser = subparsers.add_parser(
        "quarantine-replay",
        help="move quarantined messages back to their queue",
        description=(
            "Move messages from <queue>.quarantine back to <queue>, without their "
            "quarantine headers (after, say, a disabled key was enabled again). "
            "Each is acknowledged only after the broker confirmed its copy."
        ),
        epilog=_EPILOG,
    )
    _add_topology_arguments(parser)
    parser.add_argument("--count", type=positive_int, help="move at most N messages")
    parser.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help=(
            "move only messages quarantined for REASON (malformed, undecryptable, "
            "context-denied, key-denied, key-mismatch, kms-rejected, key-disabled, "
            "key-pending-deletion, "
            "handler-error, expired); repeatable"
        ),
    )
    parser.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Run ``envelope-mq quarantine-replay``; the exit code."""
    try:
        settings = Settings.from_env()
        result = replay_quarantine(
            settings.rabbitmq_urls,
            topology_from_args(args),
            limit=args.count,
            reasons=None if args.reason is None else frozenset(args.reason),
        )
    except MessagingError as exc:
        print(f"envelope-mq quarantine-replay: {exc}", file=sys.stderr)
        return 1
    detail = ", ".join(f"{n} {r}" for r, n in sorted(result.moved.items()))
    print(
        f"envelope-mq quarantine-replay: moved {result.total_moved} message(s) "
        f"to {args.queue!r}{f' ({detail})' if detail else ''}; "
        f"left {result.skipped} in quarantine",
        file=sys.stderr,
    )
    return 0
