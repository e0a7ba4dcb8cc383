"""The app: tasks that record what ran, so the test can prove what never did.

``celery -A tests.integration.celery_app.app worker`` builds it from its
environment; the test process calls :func:`make_app` with the same values.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from envelope_mq.shared.config import Settings
from envelope_mq.shared.kms import AliyunKms
from kombu import Queue

from envelope_mq.celery import setup


def _kms(env: Mapping[str, str], role: str) -> AliyunKms:
    settings = Settings(
        rabbitmq_urls=(env["EMQ_CELERY_BROKER"],),
        kms_endpoint=env["EMQ_CELERY_KMS"],
        access_key_id=env[f"EMQ_CELERY_{role}_ID"],
        access_key_secret=env[f"EMQ_CELERY_{role}_SECRET"],
    )
    return AliyunKms.from_settings(settings)


def make_app(env: Mapping[str, str]) -> Celery:
    """The test app, its queue and tasks, sealed under the emulator's key."""
    queue = env["EMQ_CELERY_QUEUE"]
    ran = Path(env["EMQ_CELERY_RAN_DIR"])
    app = Celery("emq_celery_test", broker=env["EMQ_CELERY_BROKER"], backend="rpc://")
    app.conf.update(
        task_default_queue=queue,
        # Test queues must go away: the task queue and its quarantine expire.
        task_queues=[Queue(queue, queue_arguments={"x-expires": 600_000})],
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        # no pidbox queue: several test workers share the broker
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
    )
    setup(
        app,
        key_id=env["EMQ_CELERY_KEY_ID"],
        context={"app": "celery-test"},
        provider=_kms(env, "SEAL"),
        open_provider=_kms(env, "OPEN"),
        allow_context=["app=celery-test"],
        quarantine_arguments={"x-expires": 600_000},
    )

    def record(name: str, value: object) -> None:
        (ran / f"{name}-{time.monotonic_ns()}").write_text(repr(value))

    @app.task(name="emq.add", shared=False)
    def add(x: int, y: int) -> int:
        record("add", (x, y))
        return x + y

    @app.task(name="emq.echo", shared=False)
    def echo(secret: str, *, note: str = "") -> str:
        record("echo", secret)
        return f"{secret}|{note}"

    @app.task(
        name="emq.flaky",
        shared=False,
        bind=True,
        max_retries=3,
        default_retry_delay=0.2,
    )
    def flaky(self: Any, token: str) -> str:
        record("flaky", self.request.retries)
        if self.request.retries < 2:
            raise self.retry()
        return token

    @app.task(name="emq.slow", shared=False)
    def slow(token: str, seconds: float) -> str:
        (ran / f"started-{time.monotonic_ns()}").write_text(token)
        time.sleep(seconds)
        record("slow", token)
        return token

    return app


app = make_app(os.environ) if "EMQ_CELERY_QUEUE" in os.environ else None
