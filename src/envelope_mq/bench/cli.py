"""``envelope-mq bench``: run the benchmark, print the table, check the targets.

Progress goes to stderr, the results table (Markdown) to stdout, ``--json
FILE`` writes every figure and target, and ``--check`` exits 1 when a target
was missed, naming it. The broker comes from ``RABBITMQ_URL``; the KMS is an
in-process emulator with a producer and a consumer principal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from envelope_mq.bench.crypto import run_crypto
from envelope_mq.bench.emulator_load import run_emulator_load
from envelope_mq.bench.files import run_files
from envelope_mq.bench.kms_economy import run_kms_economy
from envelope_mq.bench.lab import open_lab
from envelope_mq.bench.latency import run_latency
from envelope_mq.bench.layouts import QUEUE_TYPES, run_layouts
from envelope_mq.bench.machine import describe_machine
from envelope_mq.bench.memory import run_memory
from envelope_mq.bench.report import Report
from envelope_mq.bench.streams import run_stream_replay
from envelope_mq.bench.throughput import run_throughput
from envelope_mq.shared.cli_args import positive_float, positive_int
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import MessagingError

__all__ = ["SECTIONS", "register", "run"]

SECTIONS = (
    "throughput",
    "latency",
    "crypto",
    "emulator",
    "memory",
    "files",
    "asyncio",
    "faststream",
    "celery",
    "layouts",
    "streams",
    "stage",
)
# Run only when asked for (--only layouts, or --layouts beside the default run).
_OPT_IN = {"layouts"}
_BROKER_SECTIONS = {
    "layouts",
    "throughput",
    "latency",
    "memory",
    "asyncio",
    "faststream",
    "celery",
    "streams",
    "stage",
}
_MEMORY_KEYS = 1024
_MESSAGES_PER_KEY = 16


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``bench`` subcommand of ``envelope-mq``."""
    parser = subparsers.add_parser(
        "bench",
        help="measure envelope-mq beside plain pika and check its targets",
        description=(
            "Benchmark envelope-mq on this machine: throughput beside plain pika "
            "(interleaved rounds), KMS economy, latency at a fixed rate, crypto "
            "beside the AWS Encryption SDK and raw AES-GCM, the KMS emulator "
            "under load, a consumer's memory, sealed files, and a stream replay "
            "(rate beside plain pika, KMS Decrypt calls). Uses the "
            "RabbitMQ at RABBITMQ_URL and an in-process KMS emulator."
        ),
    )
    parser.add_argument(
        "--messages", type=positive_int, default=20_000, help="per round and side"
    )
    parser.add_argument(
        "--size", type=positive_int, default=1024, help="message size in bytes"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="interleaved rounds"
    )
    parser.add_argument(
        "--celery-tasks",
        type=positive_int,
        default=2_000,
        help="celery: tasks per round and side",
    )
    parser.add_argument(
        "--replay-events",
        type=positive_int,
        default=100_000,
        help="streams: events in the replayed stream",
    )
    parser.add_argument(
        "--replay-keys",
        type=positive_int,
        default=100,
        help="streams: data keys the events are sealed under",
    )
    parser.add_argument(
        "--rate", type=positive_int, default=1000, help="latency: offered msg/s"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="latency: seconds"
    )
    parser.add_argument(
        "--emulator-seconds",
        type=positive_float,
        default=5.0,
        help="KMS emulator load: seconds per action",
    )
    parser.add_argument(
        "--file-size",
        type=positive_int,
        default=64,
        metavar="MIB",
        help="sealed file size in MiB",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--queue-type",
        action="append",
        choices=QUEUE_TYPES,
        help="throughput and layouts: this queue type only (repeatable; "
        "default: classic and quorum)",
    )
    parser.add_argument(
        "--wire-version",
        action="append",
        type=int,
        choices=(1, 2),
        help="throughput and crypto: the wire formats measured (repeatable; "
        "default 2 and 1). v2, the default format, carries the targets and "
        "always runs; 1 adds v1's rows beside it",
    )
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="also measure the header layouts (slow; not in the default run)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen sections; print the table; the exit code."""
    sections = _sections(args)
    report = Report(machine=describe_machine(), parameters=_parameters(args))
    started = time.monotonic()
    try:
        if sections & _BROKER_SECTIONS:
            _broker_sections(report, args, sections)
        if "crypto" in sections:
            run_crypto(report, args.rounds, _wire_versions(args))
        if "emulator" in sections:
            run_emulator_load(report, args.emulator_seconds)
        if "files" in sections:
            run_files(report, args.rounds, args.file_size * 1024 * 1024)
    except MessagingError as exc:
        print(f"envelope-mq bench: {exc}", file=sys.stderr)
        # What was measured before the failure is still worth having.
        sys.stdout.write(report.table())
        return 1
    report.parameters["wall time, s"] = round(time.monotonic() - started, 1)
    sys.stdout.write(report.table())
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(report.to_json() + "\n", encoding="utf-8")
    if args.check and report.missed:
        for target in report.missed:
            print(
                f"envelope-mq bench: target missed: {target.name}: "
                f"{target.measured:.3g} {target.unit}, needs {target.op} "
                f"{target.limit:g} {target.unit}",
                file=sys.stderr,
            )
        return 1
    return 0


def _broker_sections(
    report: Report, args: argparse.Namespace, sections: set[str]
) -> None:
    settings = Settings.from_env()
    with open_lab(settings.rabbitmq_urls) as lab:
        report.machine["RabbitMQ"] = lab.broker.server_version()
        # Latency first: a steady 1,000 msg/s is measured on a settled broker,
        # not on one still catching up after the throughput section's bulk.
        if "latency" in sections:
            run_latency(report, lab, args.rate, args.duration, args.size)
        if "throughput" in sections:
            for kind in args.queue_type or QUEUE_TYPES:
                run_throughput(
                    report,
                    lab,
                    args.messages,
                    args.size,
                    args.rounds,
                    kind,
                    v1=1 in _wire_versions(args),
                )
        if sections & {"throughput", "latency"}:
            run_kms_economy(report, lab)
        if "memory" in sections:
            run_memory(report, lab, _MEMORY_KEYS, _MESSAGES_PER_KEY, args.size)
        if "asyncio" in sections:
            # Imported here: the [aio] and [faststream] extras are optional.
            from envelope_mq.bench.aio_throughput import run_asyncio

            run_asyncio(report, lab, args.messages, args.size, args.rounds)
        if "faststream" in sections:
            from envelope_mq.bench.aio_throughput import run_faststream

            run_faststream(report, lab, args.messages, args.size, args.rounds)
        if "celery" in sections:
            # Imported here: the [celery] extra is optional.
            from envelope_mq.bench.celery_throughput import run_celery

            run_celery(report, lab, args.celery_tasks, args.size, args.rounds)
        if "layouts" in sections:
            run_layouts(
                report,
                lab,
                args.messages,
                args.size,
                args.rounds,
                tuple(args.queue_type or QUEUE_TYPES),
            )
        if "streams" in sections:
            # After the KMS economy: its counts are the emulator's since start.
            run_stream_replay(
                report,
                lab,
                args.replay_events,
                args.replay_keys,
                args.size,
                min(args.rounds, 3),
            )
        if "stage" in sections:
            from envelope_mq.bench.stage import run_stage

            run_stage(report, lab, args.messages, args.size, args.rounds)


def _wire_versions(args: argparse.Namespace) -> tuple[int, ...]:
    """The wire formats to measure: v2 always (the targets), then the rest."""
    chosen = getattr(args, "wire_version", None) or (2, 1)
    return (2, *sorted(set(chosen) - {2}))


def _sections(args: argparse.Namespace) -> set[str]:
    """The sections to run: --only's, else all but the opt-in ones (+ --layouts)."""
    chosen = set(args.only) if args.only else set(SECTIONS) - _OPT_IN
    if getattr(args, "layouts", False):
        chosen.add("layouts")
    return chosen


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "messages per round and side": args.messages,
        "message size, bytes": args.size,
        "rounds": args.rounds,
        "celery tasks per round and side": args.celery_tasks,
        "stream replay: events, data keys": f"{args.replay_events:,}, "
        f"{args.replay_keys:,}",
        "latency rate, msg/s": args.rate,
        "latency duration, s": args.duration,
        "emulator load, s per action": args.emulator_seconds,
        "sealed file, MiB": args.file_size,
        "queue types": ", ".join(args.queue_type or QUEUE_TYPES),
        "wire versions": ", ".join(str(v) for v in _wire_versions(args)),
        "sections": ", ".join(s for s in SECTIONS if s in _sections(args)),
    }
