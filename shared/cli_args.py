"""Argparse pieces the ``envelope-mq`` subcommands share: number types, topology."""

from __future__ import annotations

import argparse
import dataclasses
import math

from envelope_mq.shared.amqp import DEFAULT_EXCHANGE, QUEUE_TYPES, Topology
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError

__all__ = [
    "add_region_arguments",
    "add_topology_arguments",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "settings_with_regions",
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


def add_region_arguments(parser: argparse.ArgumentParser, *, writer: bool) -> None:
    """KMS regions (shared/regions.py): endpoints; a writer's copies, a reader's order.

    Each flag overrides its environment variable (see :func:`settings_with_regions`).
    """
    group = parser.add_argument_group("KMS regions")
    group.add_argument(
        "--region-endpoint",
        action="append",
        default=[],
        metavar="REGION=ENDPOINT",
        help="KMS endpoint of another region (repeatable; KMS_REGION_ENDPOINTS); "
        "a region not given one is reached at kms.REGION.aliyuncs.com",
    )
    if writer:
        group.add_argument(
            "--wrap-also",
            action="append",
            default=[],
            metavar="REGION=KEY_ID",
            help="wrap each data key under this region's master key too, so "
            "that readers there can open the messages when the primary region "
            "(ALIBABA_CLOUD_REGION_ID) is down (repeatable; KMS_WRAP_ALSO)",
        )
        group.add_argument(
            "--require-all-copies",
            action="store_true",
            default=None,
            help="refuse to seal when a --wrap-also copy cannot be made (default: "
            "seal with the copies made, log and count each one missing; "
            "KMS_REQUIRE_ALL_COPIES)",
        )
    else:
        group.add_argument(
            "--regions",
            metavar="REGION,...",
            help="KMS regions to unwrap data keys in, in this order (KMS_REGIONS; "
            "default: ALIBABA_CLOUD_REGION_ID, then those of --region-endpoint)",
        )


def settings_with_regions(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with what the flags of :func:`add_region_arguments` say."""
    changes: dict[str, object] = {}
    if args.region_endpoint:
        changes["kms_region_endpoints"] = _pairs(
            args.region_endpoint, "--region-endpoint"
        )
    if getattr(args, "wrap_also", None):
        changes["kms_wrap_also"] = _pairs(args.wrap_also, "--wrap-also")
    if getattr(args, "require_all_copies", None) is not None:
        changes["kms_require_all_copies"] = args.require_all_copies
    if getattr(args, "regions", None):
        changes["kms_regions"] = tuple(
            r.strip() for r in args.regions.split(",") if r.strip()
        )
    return dataclasses.replace(settings, **changes) if changes else settings  # type: ignore[arg-type]


def _pairs(items: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{flag} takes REGION=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
