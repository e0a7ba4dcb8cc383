"""Celery throughput: the same app with the envelope serializer beside json.

Two Celery apps on one broker, alike but for ``envelope_mq.celery.setup``:
each round, for each side in alternating order, a real worker (Celery's
embedded ``WorkController``, solo pool, in a thread of this process) is
started on an empty queue, then the clock runs from the first
``apply_async`` of ``tasks`` tasks (one argument of ``size`` bytes, results
ignored) to the last one executed. The ratio envelope ÷ json is taken within
each round, then the median.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Queue

from envelope_mq.bench.broker import QUEUE_EXPIRES_MS
from envelope_mq.bench.lab import CONTEXT, Lab
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, rate, round_ratios
from envelope_mq.celery import setup
from envelope_mq.progress import Progress
from envelope_mq.shared.errors import BrokerError
from envelope_mq.shared.kms import AliyunKms

__all__ = ["TARGET", "run_celery"]

JSON, SEALED = "Celery, json", "Celery, envelope serializer"
TARGET = 0.9
# Nothing in a round may take longer than this; reaching it fails the run.
_PATIENCE = 300.0


class _Counter:
    """Tasks executed so far; wakes the waiter at the expected count."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.count = 0
        self.expected = 0

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.expected:
                self._lock.notify_all()

    def reset(self, expected: int) -> None:
        with self._lock:
            self.count, self.expected = 0, expected

    def wait(self) -> bool:
        with self._lock:
            return self._lock.wait_for(
                lambda: self.count >= self.expected, timeout=_PATIENCE
            )


def _app(lab: Lab, name: str, counter: _Counter, *, sealed: bool) -> Celery:
    queue = f"emq-bench-{lab.broker.tag}-celery-{name}"
    app = Celery(f"emq-bench-{name}", broker=lab.broker.url)
    app.conf.update(
        task_default_queue=queue,
        task_queues=[Queue(queue, queue_arguments={"x-expires": QUEUE_EXPIRES_MS})],
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=64,
        # What setup() sets for reliability, on both sides: only sealing differs.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
    )
    if sealed:
        setup(
            app,
            key_id=lab.key_id,
            context=CONTEXT,
            provider=AliyunKms.from_settings(lab.settings("producer")),
            open_provider=AliyunKms.from_settings(lab.settings("consumer")),
        )

    def noop(payload: str) -> None:
        counter.hit()

    app.task(name="emq.bench.noop", shared=False)(noop)

    return app


def _side(app: Celery, counter: _Counter, payload: str, tasks: int) -> float:
    task: Any = app.tasks["emq.bench.noop"]
    # One worker at a time: Celery keeps the accept list of the tasks a
    # worker runs in a process-wide global, so two embedded workers of two
    # apps would share one. Started and stopped outside the timed window.
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        hostname=f"emq-bench-{uuid.uuid4().hex[:8]}@localhost",
        # Celery's embedded worker takes ~10 s to notice it should stop.
        shutdown_timeout=60.0,
    ):
        counter.reset(tasks)
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(tasks):
                task.apply_async((payload,), producer=producer)
        if not counter.wait():
            raise BrokerError(f"celery ran {counter.count} of {tasks} tasks")
        return rate(tasks, time.perf_counter() - started)


def run_celery(report: Report, lab: Lab, tasks: int, size: int, rounds: int) -> None:
    """Tasks/s of a Celery app with the envelope serializer beside json."""
    payload = os.urandom(size // 2).hex()
    counter = _Counter()
    apps = {
        JSON: _app(lab, "json", counter, sealed=False),
        SEALED: _app(lab, "sealed", counter, sealed=True),
    }
    rates: dict[str, list[float]] = {JSON: [], SEALED: []}
    try:
        with Progress("celery", rounds * 2, announce=True) as bar:
            for r in range(rounds):
                for side in (JSON, SEALED) if r % 2 == 0 else (SEALED, JSON):
                    rates[side].append(_side(apps[side], counter, payload, tasks))
                    bar.advance()
    finally:
        for app in apps.values():
            app.close()
    section = "celery: first apply_async to last task run, tasks/s"
    for side in (JSON, SEALED):
        report.add(section, side, median(rates[side]), "tasks/s", rounds=rates[side])
    ratios = round_ratios(rates[SEALED], rates[JSON])
    ratio = median(ratios)
    report.add(
        section,
        f"{SEALED} ÷ {JSON}",
        ratio,
        "x",
        rounds=ratios,
        note="what sealing every task costs a Celery app (solo worker)",
    )
    report.check(f"celery: {SEALED} ÷ {JSON}", ratio, ">=", TARGET, "x")
