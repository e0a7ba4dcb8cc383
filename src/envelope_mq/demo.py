"""``envelope-mq demo``: the whole system end to end, with nothing configured.

It needs a RabbitMQ (``RABBITMQ_URL``, or one on localhost; failing that a
throwaway broker in a container or a private ``rabbitmq-server`` node) and a
KMS: the one configured with ``KMS_ENDPOINT`` and ``KMS_KEY_ID``, or else an
in-process emulator with a fresh key and two least-privilege principals.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from envelope_mq.demo_report import format_report
from envelope_mq.demo_run import DemoRoles, run_demo
from envelope_mq.shared.amqp import redact_url
from envelope_mq.shared.cli_args import positive_int
from envelope_mq.shared.config import DEFAULT_RABBITMQ_URL, Settings
from envelope_mq.shared.errors import (
    BrokerUnavailableError,
    ConfigError,
    MessagingError,
)
from envelope_mq.shared.kms import AliyunKms
from envelope_mq.shared.observability import (
    Metrics,
    Observability,
    add_observability_arguments,
    observability,
)
from envelope_mq.testing.broker import NoBrokerError, start_broker
from envelope_mq.testing.kms import running_emulator
from envelope_mq.testing.probe import amqp_answers

__all__ = ["register"]

DEMO_KEY_ALIAS = "alias/envelope-mq-demo"

HOW_TO_GET_A_BROKER = (
    "start one with `apt-get install rabbitmq-server` (Debian runs it at once) "
    "or `docker run -d -p 5672:5672 rabbitmq:3.13-management`, or point "
    "RABBITMQ_URL at yours"
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="publish, consume and verify encrypted messages end to end",
        description=(
            "Publish N encrypted messages, consume them back, verify every one "
            "and print a summary. With nothing configured it runs its own KMS "
            "emulator and uses the RabbitMQ on localhost."
        ),
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=1000,
        help="how many messages (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=1024,
        help="payload bytes per message (default: %(default)s)",
    )
    add_observability_arguments(parser)
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class _Kms:
    roles: DemoRoles
    description: str
    emulator: Any = None  # the in-process kms_emulator.Emulator, when ours

    def calls(self) -> dict[str, int]:
        if self.emulator is None:
            return {}
        counts: dict[str, int] = self.emulator.request_count
        return {k: v for k, v in counts.items() if v}


@contextlib.contextmanager
def _kms(settings: Settings) -> Iterator[_Kms]:
    if settings.kms_endpoint:
        if not settings.kms_key_id:
            raise ConfigError("KMS_ENDPOINT is set: KMS_KEY_ID must name the key")
        # One principal for both roles: it must be allowed to generate and decrypt.
        kms = AliyunKms.from_settings(settings)
        yield _Kms(
            DemoRoles(settings.kms_key_id, kms, kms),
            f"{settings.kms_endpoint} (configured), key {settings.kms_key_id}",
        )
        return
    with running_emulator(alias=DEMO_KEY_ALIAS) as fixture:
        urls = settings.rabbitmq_urls
        roles = DemoRoles(
            fixture.key_id,
            AliyunKms.from_settings(fixture.settings("producer", urls)),
            AliyunKms.from_settings(fixture.settings("consumer", urls)),
        )
        fixture.emulator.reset_request_count()
        yield _Kms(
            roles,
            f"in-process emulator at {fixture.endpoint} (strict auth), key "
            f"{DEMO_KEY_ALIAS}; producer may only GenerateDataKey, consumer "
            "only Decrypt",
            fixture.emulator,
        )


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return amqp_answers(parts.hostname or "127.0.0.1", parts.port or default_port)


@contextlib.contextmanager
def _broker(
    settings: Settings, observed: Observability
) -> Iterator[tuple[tuple[str, ...], str]]:
    urls = settings.rabbitmq_urls
    if any(_answers(url) for url in urls):
        yield urls, ", ".join(redact_url(u) for u in urls)
        return
    if urls != (DEFAULT_RABBITMQ_URL,):
        raise BrokerUnavailableError(
            "no RabbitMQ answers at RABBITMQ_URL "
            f"({', '.join(redact_url(u) for u in urls)}); {HOW_TO_GET_A_BROKER}"
        )
    observed.say(
        "envelope-mq demo: no RabbitMQ on localhost; starting a throwaway one...",
        event="demo_broker_starting",
    )
    try:
        broker = start_broker({})
    except NoBrokerError as exc:
        raise BrokerUnavailableError(f"{exc}; {HOW_TO_GET_A_BROKER}") from exc
    with broker:
        yield broker.urls, f"{redact_url(broker.url)} (throwaway {broker.kind})"


def run(args: argparse.Namespace) -> int:
    """Run ``envelope-mq demo``; 0 only when every message was verified."""
    try:
        settings = Settings.from_env()
        with observability(args, "envelope-mq demo") as observed:
            try:
                with (
                    _broker(settings, observed) as (urls, broker),
                    _kms(settings) as kms,
                ):
                    result = run_demo(
                        urls,
                        kms.roles,
                        messages=args.messages,
                        size=args.size,
                        metrics=observed.metrics,
                    )
                    calls = kms.calls()
            except MessagingError as exc:
                observed.say(
                    f"envelope-mq demo: {exc}", event="command_failed", level="error"
                )
                return 1
    except MessagingError as exc:  # before logging was set up
        print(f"envelope-mq demo: {exc}", file=sys.stderr)
        return 1
    print(
        format_report(
            result,
            broker=broker,
            kms=kms.description,
            kms_calls=calls,
            metrics=_metrics_summary(observed),
        )
    )
    return 0 if result.ok else 1


def _metrics_summary(observed: Observability) -> str | None:
    if not isinstance(observed.metrics, Metrics) or observed.server is None:
        return None
    totals = observed.metrics.totals()
    counts = ", ".join(
        f"{name} {totals.get(name, 0):,}"
        for name in ("published", "confirmed", "consumed", "handled", "quarantined")
    )
    return f"{counts} (served at {observed.server.url} while the demo ran)"
