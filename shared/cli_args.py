"""Argparse pieces the ``envelope-mq`` subcommands share: number types, topology."""

from __future__ import annotations

import argparse
import math

from envelope_mq.shared.amqp import DEFAULT_EXCHANGE, QUEUE_TYPES, Topology

__all__ = [
    "add_topology_arguments",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "topology_from_args",
]


def positive_int(text: str) -> int:
    """Argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a finite number above 0 (NaN and infinity are refused)."""
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """Argparse type: a finite number of at least 0 (NaN and infinity refused)."""
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"cannot be negative, got {text}")
    return value


def add_topology_arguments(
    parser: argparse.ArgumentParser,
    *,
    queue_help: str,
    exchange_help: str,
    routing_key_help: str,
    queue_type_help: str | None = None,
    queue_required: bool = False,
    exchange_first: bool = False,
) -> None:
    """Add --queue, --routing-key, --exchange and --queue-type (``Topology``'s fields).

    The help texts are the caller's (a producer routes to the queue, a consumer
    reads it); ``exchange_first`` lists --exchange before --routing-key.
    """
    parser.add_argument("--queue", required=queue_required, help=queue_help)

    def exchange() -> None:
        parser.add_argument("--exchange", default=DEFAULT_EXCHANGE, help=exchange_help)

    if exchange_first:
        exchange()
    parser.add_argument("--routing-key", help=routing_key_help)
    if not exchange_first:
        exchange()
    parser.add_argument(
        "--queue-type",
        choices=QUEUE_TYPES,
        default="classic",
        help=queue_type_help,
    )


def topology_from_args(args: argparse.Namespace) -> Topology:
    """The ``Topology`` named by the arguments of :func:`add_topology_arguments`."""
    return Topology(
        queue=args.queue,
        exchange=args.exchange,
        routing_key=args.routing_key,
        queue_type=args.queue_type,
    )
