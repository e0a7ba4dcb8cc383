"""The observability options every service command shares, and their wiring.

A command calls :func:`add_observability_arguments` on its parser, then runs
inside :func:`observability`, which configures logging and, when
``--metrics-port`` was given, starts the metrics/health server and yields the
:class:`Metrics` to hand to the library. Without the flag the library gets the
no-op :data:`NULL_METRICS`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from envelope_mq.shared.observability.health import HealthState
from envelope_mq.shared.observability.logs import (
    LOG_FORMATS,
    LOG_LEVELS,
    JsonFormatter,
    logging_configured,
)
from envelope_mq.shared.observability.metrics import NULL_METRICS, Metrics, MetricsHooks
from envelope_mq.shared.observability.server import DEFAULT_HOST, ObservabilityServer

__all__ = ["Observability", "add_observability_arguments", "observability"]


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def add_observability_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --log-format, --log-level, --metrics-port and --metrics-host."""
    group = parser.add_argument_group("observability")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or one JSON object each (default: %(default)s)",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        type=str.lower,
        help="least severe level logged (default: %(default)s)",
    )
    group.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help=(
            "serve Prometheus /metrics, /healthz and /readyz on PORT "
            "(0: any free port; default: off)"
        ),
    )
    group.add_argument(
        "--metrics-host",
        default=DEFAULT_HOST,
        metavar="ADDRESS",
        help="address the metrics port binds (default: %(default)s)",
    )


@dataclass(frozen=True)
class Observability:
    """What a command hands to the library: metrics hooks and health state;
    and how it writes its own status lines to stderr."""

    metrics: MetricsHooks
    health: HealthState | None = None
    server: ObservabilityServer | None = None
    log_format: str = "text"
    stream: IO[str] | None = None

    def say(self, text: str, *, event: str, level: str = "info", **fields: Any) -> None:
        """Write a command's status line: ``text`` as is, or under ``--log-format
        json`` one JSON line with ``event`` and ``fields`` (of LOG_FIELDS).

        Whatever the log level, as the line a command prints always was; usable
        after the ``observability`` block too.
        """
        if self.log_format == "json":
            record = logging.LogRecord(
                "envelope_mq.cli",
                logging.getLevelNamesMapping()[level.upper()],
                __file__,
                0,
                text,
                None,
                None,
            )
            record.__dict__.update(fields, event=event)
            text = JsonFormatter().format(record)
        stream = sys.stderr if self.stream is None else self.stream
        print(text, file=stream, flush=True)


@contextlib.contextmanager
def observability(
    args: argparse.Namespace, prog: str, *, stderr: IO[str] | None = None
) -> Iterator[Observability]:
    """Configure logging and, with --metrics-port, serve metrics; undo both on exit.

    Prints where the metrics can be scraped to ``stderr``.

    Raises:
        ConfigError: the metrics port cannot be bound.
    """
    err = sys.stderr if stderr is None else stderr
    log_format = getattr(args, "log_format", "text")
    with logging_configured(
        log_format, getattr(args, "log_level", "warning"), stream=err
    ):
        port: int | None = getattr(args, "metrics_port", None)
        if port is None:
            yield Observability(NULL_METRICS, log_format=log_format, stream=err)
        else:
            with _serving(args, prog, port, log_format, err) as served:
                yield served


@contextlib.contextmanager
def _serving(
    args: argparse.Namespace, prog: str, port: int, log_format: str, err: IO[str]
) -> Iterator[Observability]:
    health = HealthState()
    metrics = Metrics(health=health)
    host = getattr(args, "metrics_host", DEFAULT_HOST)
    with ObservabilityServer(health, metrics.registry, port=port, host=host) as server:
        observed = Observability(metrics, health, server, log_format, err)
        observed.say(
            f"{prog}: metrics at {server.url} (health: /healthz, readiness: /readyz)",
            event="metrics_serving",
            url=server.url,
        )
        yield observed
