"""``envelope-mq stage``: one pipeline hop, re-sealed under the stage's own key.

Entrypoint only: parse, read Settings from the environment once, wire an
:class:`~envelope_mq.stage.EncryptedStage`, and turn a MessagingError into
exit code 1. The handler is a function named ``MODULE:FUNCTION`` (imported
from the working directory or ``PYTHONPATH``); without one, each input's
body is handed on unchanged (re-encryption across a trust boundary).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from envelope_mq.consumer.budget import DEFAULT_DECRYPT_RATE
from envelope_mq.consumer.cli import add_stream_arguments, stream_cursor
from envelope_mq.consumer.keypolicy import KeyPolicy
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.consumer.signals import stop_on_signals
from envelope_mq.producer.cli import parse_context
from envelope_mq.shared.amqp import DEFAULT_EXCHANGE, Topology, redact_url
from envelope_mq.shared.cli_args import (
    add_topology_arguments,
    positive_float,
    positive_int,
    topology_from_args,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError, MessagingError
from envelope_mq.shared.kms.credentials import CHAIN_HELP
from envelope_mq.shared.observability import add_observability_arguments, observability
from envelope_mq.stage import EncryptedStage

__all__ = ["load_handler", "pass_through", "register"]

_EPILOG = (
    "Broker and KMS come from RABBITMQ_URL, KMS_ENDPOINT (or KMS_INSTANCE_ENDPOINT) "
    "and ALIBABA_CLOUD_* (see the README); the credentials need Decrypt on the "
    "inputs' keys and GenerateDataKey on the stage's key. " + CHAIN_HELP
)


def pass_through(message: ReceivedMessage) -> bytes:
    """The default handler: the input's body, to be sealed under the stage's key."""
    return message.body


def load_handler(spec: str) -> Callable[[ReceivedMessage], object]:
    """The function named ``MODULE:FUNCTION``; ConfigError when there is none."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"--handler takes MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--handler: cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, name, None)
    if not callable(handler):
        raise ConfigError(f"--handler: {module_name!r} has no function {name!r}")
    return handler  # type: ignore[no-any-return]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``stage`` subcommand."""
    parser = subparsers.add_parser(
        "stage",
        help="consume a queue, transform, re-seal under this stage's key, publish",
        description=(
            "Consume a queue, open each message, run the handler on it and "
            "publish what it returns sealed under this stage's master key and "
            "context, with confirms; an input is acknowledged only once all its "
            "outputs are confirmed (at-least-once across the hop; outputs carry "
            "ids derived from the input's, for de-duplication downstream). "
            "Inputs that cannot be opened go to <queue>.quarantine. SIGTERM or "
            "Ctrl-C stops once the outputs in flight are confirmed."
        ),
        epilog=_EPILOG,
    )
    add_topology_arguments(
        parser,
        queue_required=True,
        queue_help="input queue to consume (declared)",
        exchange_help="exchange the input queue is bound to (default: %(default)s)",
        routing_key_help="binding key of the input queue (default: the queue name)",
        queue_type_help="type of the input queue (default: %(default)s); a "
        "stream is read from --offset, its position kept in --offset-file",
        exchange_first=True,
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--to-queue",
        help="output queue, declared and bound to --to-exchange (or give "
        "--to-routing-key to publish to an existing binding)",
    )
    out.add_argument(
        "--to-exchange",
        default=DEFAULT_EXCHANGE,
        help="exchange the outputs go to (default: %(default)s)",
    )
    out.add_argument(
        "--to-routing-key", help="routing key of the outputs (default: --to-queue)"
    )
    out.add_argument(
        "--key-id", help="master key the outputs are sealed under (KMS_KEY_ID)"
    )
    out.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encryption context of the outputs (repeatable)",
    )
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help="function(ReceivedMessage) returning None, bytes, a StageOutput or "
        "a list of them (default: hand the body on unchanged)",
    )
    parser.add_argument("--count", type=positive_int, help="stop after N inputs")
    parser.add_argument(
        "--prefetch",
        type=positive_int,
        default=1000,
        help="inputs in flight, unacknowledged (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="accept only inputs whose context has KEY=VALUE (as consume)",
    )
    parser.add_argument(
        "--allow-key",
        action="append",
        default=[],
        metavar="KEY[@K=V,...]",
        help="accept only inputs sealed under master key KEY (as consume)",
    )
    parser.add_argument(
        "--max-deliveries",
        type=positive_int,
        default=5,
        help="deliveries before a failing input is quarantined (default: 5)",
    )
    parser.add_argument(
        "--max-decrypt-rate",
        type=positive_float,
        default=DEFAULT_DECRYPT_RATE,
        metavar="N",
        help="at most N KMS Decrypt calls per second (default: %(default)s)",
    )
    add_stream_arguments(parser)
    add_observability_arguments(parser)
    parser.set_defaults(run=run_stage)


def _output(args: argparse.Namespace) -> tuple[Topology | None, str | None]:
    if args.to_queue:
        return Topology(
            queue=args.to_queue,
            exchange=args.to_exchange,
            routing_key=args.to_routing_key,
        ), None
    if not args.to_routing_key:
        raise ConfigError("the stage needs --to-queue or --to-routing-key")
    return None, args.to_routing_key


def run_stage(args: argparse.Namespace) -> int:
    """Run ``envelope-mq stage``; the exit code."""
    prog = "envelope-mq stage"
    try:
        settings = Settings.from_env()
        output, routing_key = _output(args)
        handler = load_handler(args.handler) if args.handler else pass_through
        cursor = stream_cursor(args)
        with observability(args, prog) as observed:
            stage = EncryptedStage.from_settings(
                settings,
                topology_from_args(args),
                handler,
                output=output,
                exchange=None if output else args.to_exchange,
                routing_key=routing_key,
                key_id=args.key_id,
                context=parse_context(args.context),
                prefetch=args.prefetch,
                max_deliveries=args.max_deliveries,
                policy=ContextPolicy.parse(args.allow_context),
                key_policy=KeyPolicy.parse(args.allow_key),
                max_decrypt_rate=args.max_decrypt_rate,
                metrics=observed.metrics,
                stream=cursor,
            )
            observed.say(
                f"{prog}: {args.queue!r} -> exchange {args.to_exchange!r} "
                f"({args.to_queue or routing_key!r}) on "
                f"{', '.join(redact_url(u) for u in settings.rabbitmq_urls)}; "
                "SIGTERM or Ctrl-C stops",
                event="stage_started",
                queue=args.queue,
            )
            try:
                with stop_on_signals(stage.stop):
                    stats = stage.run(count=args.count)
            except MessagingError as exc:
                observed.say(f"{prog}: {exc}", event="command_failed", level="error")
                return 1
            quarantined = ", ".join(
                f"{n} {r}" for r, n in sorted(stats.quarantined.items())
            )
            observed.say(
                f"{prog}: {stats.handled} input(s) handed on as {stats.outputs} "
                f"output(s); quarantined: {quarantined or 'none'}; "
                f"repeated outputs (possible duplicates): {stats.repeated_outputs}"
                + ("" if cursor is None else f"; stream position: {cursor.position}"),
                event="stage_stopped",
                queue=args.queue,
                count=stats.handled,
            )
    except MessagingError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
