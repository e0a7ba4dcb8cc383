"""``envelope-mq produce``: seal and publish messages (arguments, stdin, generated)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from envelope_mq.producer.publisher import EncryptedPublisher
from envelope_mq.shared.amqp import redact_url
from envelope_mq.shared.cli_args import (
    add_region_arguments,
    add_topology_arguments,
    positive_float,
    settings_with_regions,
    topology_from_args,
)
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import ConfigError, MessagingError
from envelope_mq.shared.kms.credentials import CHAIN_HELP
from envelope_mq.shared.observability import (
    NULL_METRICS,
    Observability,
    add_observability_arguments,
    observability,
)

__all__ = ["register", "run"]

_PROG = "envelope-mq produce"
_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``produce`` subcommand."""
    parser = subparsers.add_parser(
        "produce",
        help="encrypt and publish messages",
        description=(
            "Encrypt messages with a KMS data key and publish them with publisher "
            "confirms. Messages come from the arguments, else from --file, else "
            "from --count, else one per line from stdin (blank lines skipped, and "
            "counted in the summary). Ctrl-C stops: it says how many messages were "
            "confirmed and exits 130. Configuration: RABBITMQ_URL, KMS_ENDPOINT, "
            "KMS_KEY_ID, ALIBABA_CLOUD_* (see the README)."
        ),
        epilog=CHAIN_HELP,
    )
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="message text")
    parser.add_argument(
        "--file",
        action="append",
        type=Path,
        metavar="PATH",
        help="publish the file's bytes as one message (repeatable)",
    )
    parser.add_argument(
        "--lines",
        action="store_true",
        help=(
            "with --file: one message per line instead (line ends removed; a "
            "blank line is an empty message, never dropped)"
        ),
    )
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
    parser.add_argument(
        "--wire-version",
        type=int,
        choices=(1, 2),
        help=(
            "wire format to write (EMQ_WIRE_VERSION, default 2: one binary "
            "x-emq header; 1: the five v1 headers, for readers older than v2)"
        ),
    )
    add_region_arguments(parser, writer=True)
    add_observability_arguments(parser)
    parser.set_defaults(run=run)


def _with_wire_version(settings: Settings, args: argparse.Namespace) -> Settings:
    if args.wire_version is None:
        return settings
    return dataclasses.replace(settings, wire_version=args.wire_version)


def run(args: argparse.Namespace) -> int:
    """Publish every message, wait for every confirm, print a summary to stderr.

    Ctrl-C (SIGINT) stops publishing: what was published gets up to 30 s for
    its confirms (a second Ctrl-C stops waiting), then the command says how
    many were confirmed and exits 130, without a traceback.
    """
    tally = Tally()
    interrupt = Interrupt()
    try:
        with observability(args, _PROG) as observed, interrupt.installed():
            try:
                try:
                    status = _produce(
                        args,
                        _with_wire_version(
                            settings_with_regions(Settings.from_env(), args), args
                        ),
                        sys.stdin.buffer,
                        observed,
                        tally,
                        interrupt,
                    )
                except KeyboardInterrupt:
                    _interrupted(observed, tally)
                    return _INTERRUPTED
            except MessagingError as exc:
                observed.say(
                    f"{_PROG}: error: {exc}", event="command_failed", level="error"
                )
                return 1
            except KeyboardInterrupt:  # a second Ctrl-C, while reporting
                return _INTERRUPTED
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
    except KeyboardInterrupt:  # before logging was set up
        print(f"{_PROG}: interrupted; nothing was published", file=sys.stderr)
        return _INTERRUPTED


class Interrupt:
    """Ctrl-C, raised as KeyboardInterrupt only where nothing is half done.

    A KeyboardInterrupt raised at an arbitrary bytecode can land inside the
    publisher's bookkeeping and leave it unable to close. So the first SIGINT
    interrupts a wait for input at once, and otherwise is only noted: the
    message loop raises it between two messages (after a flush at the latest).
    Once raised, a second Ctrl-C interrupts whatever runs (the wait for confirms).
    """

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT as described while the block runs (main thread only)."""
        if (
            threading.current_thread() is not threading.main_thread()
            # ignored by whoever started us (a shell's background job): keep it so
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ):
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_signal)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def waiting_for_input(self) -> Iterator[None]:
        """A block in which nothing of ours is half done: interrupted at once."""
        self.checkpoint()
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def checkpoint(self) -> None:
        """Raise the Ctrl-C noted since the last checkpoint, if any."""
        if self.requested:
            self._raise()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._waiting:
            self._raise()

    def _raise(self) -> None:
        # From now on Ctrl-C is Python's own again: it stops the wait for confirms.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt


class Tally:
    """Messages handed to the publisher, and their fates (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.published = self.confirmed = 0
        self.blank_lines = 0  # stdin lines skipped
        self.failures: list[BaseException] = []

    def sent(self, future: Future[str]) -> None:
        """Count one publish; its confirm or failure is counted when it comes."""
        self.published += 1  # the publishing thread only
        future.add_done_callback(self._settled)

    def settled(self) -> tuple[int, int]:
        """How many were confirmed and how many failed, so far."""
        with self._lock:
            return self.confirmed, len(self.failures)

    def _settled(self, future: Future[str]) -> None:
        error = future.exception()
        with self._lock:
            if error is None:
                self.confirmed += 1
            else:
                self.failures.append(error)


def _interrupted(observed: Observability, tally: Tally) -> None:
    confirmed, failed = tally.settled()
    observed.say(
        f"{_PROG}: interrupted: {confirmed} of {tally.published} message(s) "
        f"confirmed" + (f", {failed} failed" if failed else ""),
        event="produce_interrupted",
        level="warning",
        count=confirmed,
    )


def _produce(
    args: argparse.Namespace,
    settings: Settings,
    stdin: BinaryIO,
    observed: Observability | None = None,
    tally: Tally | None = None,
    interrupt: Interrupt | None = None,
) -> int:
    observed = observed or Observability(NULL_METRICS)
    tally = tally or Tally()
    interrupt = interrupt or Interrupt()
    context = parse_context(args.context)
    topology = topology_from_args(args) if args.queue else None
    if topology is None and not args.routing_key:
        raise ConfigError("give --queue NAME or --routing-key KEY")
    messages = _messages(args, stdin, tally, interrupt)
    started = time.perf_counter()
    size = 0
    with EncryptedPublisher.from_settings(
        settings,
        topology=topology,
        exchange=None if topology else args.exchange,
        key_id=args.key_id,
        context=context,
        metrics=observed.metrics,
    ) as publisher:
        for body in messages:
            interrupt.checkpoint()
            tally.sent(
                publisher.publish(
                    body, routing_key=args.routing_key, content_type=args.content_type
                )
            )
            size += len(body)
        publisher.flush()
        interrupt.checkpoint()
    elapsed = max(time.perf_counter() - started, 1e-9)
    where = ", ".join(redact_url(u) for u in settings.rabbitmq_urls)
    route = args.routing_key or (topology.binding_key if topology else "")
    count, failures = tally.published, tally.failures
    confirmed = count - len(failures)
    blank = tally.blank_lines
    skipped = f"; skipped {blank} blank stdin line(s)" if blank else ""
    observed.say(
        f"{_PROG}: {confirmed} of {count} message(s), {size} bytes, confirmed by "
        f"{where} (exchange {publisher.exchange!r}, routing key {route!r}) in "
        f"{elapsed:.2f} s ({confirmed / elapsed:.0f} msg/s){skipped}",
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


def parse_context(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["tenant=a", "app=b"]`` into ``{"tenant": "a", "app": "b"}``."""
    context: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--context takes KEY=VALUE, got {item!r}")
        context[key] = value
    return context


def _messages(
    args: argparse.Namespace,
    stdin: BinaryIO,
    tally: Tally,
    interrupt: Interrupt | None = None,
) -> Iterator[bytes]:
    files: list[Path] = args.file or []
    sources = [bool(args.messages), bool(files), args.count is not None]
    if sum(sources) > 1:
        raise ConfigError("give messages as arguments, --file or --count, not several")
    if args.lines and not files:
        raise ConfigError("--lines goes with --file")
    if args.messages:
        return (m.encode("utf-8") for m in args.messages)
    if files:
        unreadable = [str(p) for p in files if not p.is_file()]
        if unreadable:
            raise ConfigError(f"--file: not a readable file: {', '.join(unreadable)}")
        return _file_lines(files) if args.lines else (p.read_bytes() for p in files)
    if args.count is not None:
        if args.count < 0 or args.size < 0:
            raise ConfigError("--count and --size must not be negative")
        return generated(args.count, args.size)
    # Streamed line by line, so `... | envelope-mq produce` publishes as lines come.
    return _stdin_lines(stdin, tally, interrupt or Interrupt())


def _file_lines(files: Iterable[Path]) -> Iterator[bytes]:
    """Every line of every file, line ends removed; blank lines are messages too."""
    for path in files:
        with path.open("rb") as stream:
            for line in stream:
                yield line.rstrip(b"\r\n")


def _stdin_lines(
    stdin: BinaryIO, tally: Tally, interrupt: Interrupt
) -> Iterator[bytes]:
    """Non-blank stdin lines; the blank ones are counted for the summary."""
    while True:
        with interrupt.waiting_for_input():
            raw = stdin.readline()
        if not raw:
            return
        line = raw.rstrip(b"\r\n")
        if line:
            yield line
        else:
            tally.blank_lines += 1


def generated(count: int, size: int) -> Iterator[bytes]:
    """``count`` distinct printable messages of exactly ``size`` bytes."""
    filler = b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1)
    for n in range(count):
        label = f"message {n} ".encode()
        yield (label + filler)[:size]
