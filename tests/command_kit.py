"""Running the ``envelope-mq`` commands as a user would (tests/ is on sys.path).

A command reads its settings from the environment, once, at start; a test
gives it exactly the settings it means to, whatever the developer's shell
exports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from envelope_mq.shared.config import Settings

__all__ = [
    "ENVELOPE_MQ",
    "ENVELOPE_MQ_MODULE",
    "TIMEOUT",
    "clean_env",
    "env_for",
    "finish",
    "produce",
    "start_consume",
    "topology_args",
]

# The installed console script, as a user runs it.
ENVELOPE_MQ = str(Path(sys.executable).with_name("envelope-mq"))
# The same command through this interpreter's ``-m``.
ENVELOPE_MQ_MODULE = (sys.executable, "-m", "envelope_mq")

# Seconds a command may take before a test gives up on it.
TIMEOUT = 120

# The prefixes of the variables the commands read their settings from.
_OURS = ("KMS_", "ALIBABA_CLOUD_", "RABBITMQ_", "EMQ_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any of our settings, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    env.update(extra)
    return env


def env_for(settings: Settings | None, **extra: str) -> dict[str, str]:
    """The environment a command reads ``settings`` from (broker, KMS endpoint,
    master key and AccessKey; None: none of them), and ``extra``."""
    env = clean_env()
    if settings is not None:
        env.update(
            RABBITMQ_URL=",".join(settings.rabbitmq_urls),
            KMS_ENDPOINT=settings.kms_endpoint or "",
            KMS_KEY_ID=settings.kms_key_id or "",
            ALIBABA_CLOUD_ACCESS_KEY_ID=settings.access_key_id or "",
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=settings.access_key_secret or "",
        )
    env.update(extra)
    return env


def topology_args(names: Any) -> list[str]:
    """``--queue`` and ``--exchange`` of ``names`` (AmqpNames or a Topology)."""
    return ["--queue", names.queue, "--exchange", names.exchange]


def produce(settings: Settings, names: Any, lines: list[str], *extra: str) -> str:
    """``envelope-mq produce`` of ``lines`` on stdin, which succeeds; its stderr."""
    done = subprocess.run(
        [ENVELOPE_MQ, "produce", *topology_args(names), *extra],
        input="".join(f"{line}\n" for line in lines),
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def start_consume(settings: Settings, names: Any, *extra: str) -> subprocess.Popen[str]:
    """``envelope-mq consume``, running, its stdout and stderr piped."""
    return subprocess.Popen(
        [ENVELOPE_MQ, "consume", *topology_args(names), *extra],
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for ``process``; its exit code, stdout and stderr."""
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err
