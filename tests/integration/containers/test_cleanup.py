"""Containers never leak: the owner labels and reap() (Ryuk cannot run here)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from envelope_mq.testing.containers import LABEL, OWNER_LABEL, rabbitmq_image, reap

pytestmark = [pytest.mark.container, pytest.mark.integration]


def dead_pid() -> int:
    """The PID of a process that has exited (and been waited for)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def client(container_engine: None) -> Iterator[Any]:
    engine = docker.from_env(timeout=60)
    yield engine
    engine.close()


def labelled(client: Any, owner: str) -> Any:
    return client.containers.create(
        rabbitmq_image(os.environ),
        command=["true"],
        labels={LABEL: "true", OWNER_LABEL: owner},
    )


def test_reap_removes_what_a_dead_test_process_left_and_keeps_live_ones(
    client: Any,
) -> None:
    orphan = labelled(client, f"{socket.gethostname()}:{dead_pid()}")
    mine = labelled(client, f"{socket.gethostname()}:{os.getpid()}")
    elsewhere = labelled(client, "another-host:1")
    try:
        removed = reap()
        names = {c.name for c in client.containers.list(all=True)}
        assert f"container:{orphan.name}" in removed
        assert orphan.name not in names
        assert {mine.name, elsewhere.name} <= names

        removed = reap(including_mine=True)
        names = {c.name for c in client.containers.list(all=True)}
        assert f"container:{mine.name}" in removed
        assert mine.name not in names
        assert elsewhere.name in names
    finally:
        for container in (orphan, mine, elsewhere):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
