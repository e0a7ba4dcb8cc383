"""RabbitMQ in a container for tests, and clean-up of every container tests create.

The engine is whatever answers the Docker API (``DOCKER_HOST``): a Docker engine, or
podman's Docker-compatible socket that ``scripts/containers.sh`` serves on machines
without Docker. The image is ``EMQ_RABBITMQ_IMAGE`` when set (the script points it at
a locally built one), else the pinned official image.

Ryuk, testcontainers' reaper, cannot run everywhere (its image exists only on Docker
Hub), so nothing relies on it: every container, network and pod the tests create is
labelled with its owner (host name and PID of the test process), and :func:`reap`
removes those whose owner has exited. A crashed run's leftovers are thus removed by
the next run's start, and a run removes its own at its end; concurrent runs on one
machine never remove each other's.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import socket
import subprocess
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envelope_mq.testing.probe import docker_answers, free_port, wait_for_amqp

__all__ = [
    "LABEL",
    "OFFICIAL_RABBITMQ_IMAGE",
    "OWNER_LABEL",
    "RabbitContainer",
    "container_engine_unavailable_reason",
    "owner",
    "owner_labels",
    "rabbitmq_image",
    "reap",
]

# Pinned, never :latest: a new RabbitMQ release must not change a test run.
OFFICIAL_RABBITMQ_IMAGE = "rabbitmq:3.13-management"
LABEL = "envelope-mq.test"
OWNER_LABEL = "envelope-mq.test.owner"
AMQP_PORT = 5672


def owner(pid: int | None = None) -> str:
    """This process as a label value: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def owner_labels() -> dict[str, str]:
    """The labels every container, network and pod of this test process carries."""
    return {LABEL: "true", OWNER_LABEL: owner()}


def rabbitmq_image(environ: Mapping[str, str]) -> str:
    """The RabbitMQ image to run: ``EMQ_RABBITMQ_IMAGE`` or the official one."""
    return environ.get("EMQ_RABBITMQ_IMAGE", "").strip() or OFFICIAL_RABBITMQ_IMAGE


def container_engine_unavailable_reason() -> str | None:
    """None when a Docker API answers, else why not and what to do."""
    if docker_answers():
        return None
    return (
        "no container engine answers the Docker API: start Docker, or run "
        "scripts/containers.sh run -- pytest -m container (podman, as root on Debian)"
    )


def _alive(label_value: str) -> bool:
    """False when the owner is a process of this host that no longer exists."""
    host, _, pid = label_value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's, or not ours to judge: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(*, including_mine: bool = False) -> list[str]:
    """Remove labelled containers, pods and networks whose owner exited.

    With ``including_mine``, this process's own go too (at the end of a session).
    Returns what was removed, as ``kind:name``; never raises.
    """
    mine = owner()

    def doomed(labels: Mapping[str, str] | None) -> bool:
        value = (labels or {}).get(OWNER_LABEL)
        if value is None:
            return False
        return (including_mine and value == mine) or not _alive(value)

    removed: list[str] = []
    with contextlib.suppress(Exception):  # no engine: nothing to reap
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=30)
        try:
            for container in client.containers.list(
                all=True, filters={"label": OWNER_LABEL}
            ):
                if doomed(container.labels):
                    with contextlib.suppress(Exception):
                        container.remove(force=True, v=True)
                        removed.append(f"container:{container.name}")
            removed += _reap_pods(doomed)
            for network in client.networks.list(filters={"label": OWNER_LABEL}):
                if doomed(network.attrs.get("Labels")):
                    with contextlib.suppress(Exception):
                        network.remove()
                        removed.append(f"network:{network.name}")
        finally:
            client.close()
    return removed


def _reap_pods(doomed: Callable[[Mapping[str, str] | None], bool]) -> list[str]:
    """Pods exist only on podman (podman-compose may create one per project)."""
    if os.environ.get("EMQ_CONTAINER_ENGINE") != "podman":
        return []
    import json

    listing = subprocess.run(
        ["podman", "pod", "ps", "--format", "json", "--filter", f"label={LABEL}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    removed = []
    for pod in json.loads(listing.stdout or "[]"):
        if doomed(pod.get("Labels")):
            subprocess.run(
                ["podman", "pod", "rm", "-f", pod["Id"]],
                capture_output=True,
                timeout=60,
                check=False,
            )
            removed.append(f"pod:{pod.get('Name')}")
    return removed


@dataclass
class RabbitContainer:
    """A RabbitMQ container on a fixed loopback port, stoppable and startable.

    The host port is chosen once (never 5672) and bound explicitly, so the URL stays
    valid across :meth:`stop` and :meth:`start` (a Docker engine would otherwise
    publish the port on a new random host port at every start).
    """

    image: str
    host_port: int = 0
    # The server creates this user at its first start (RABBITMQ_DEFAULT_USER/PASS),
    # instead of guest: the broker's port is on the host, if only on loopback.
    username: str = "emq-test"
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _container: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.host_port:
            self.host_port = free_port()

    @property
    def url(self) -> str:
        """The AMQP URL (with the credentials) on the published port."""
        return f"amqp://{self.username}:{self.password}@127.0.0.1:{self.host_port}/%2F"

    def start(self, timeout: float = 120.0) -> None:
        """Create and start the container the first time, restart it afterwards;
        returns once it answers AMQP."""
        if self._container is None:
            with warnings.catch_warnings():
                # testcontainers warns of its own deprecations when imported.
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.community.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer(
                self.image, username=self.username, password=self.password
            )
            # Loopback only: docker-py takes (host_ip, port), testcontainers' own
            # with_bind_ports() binds every interface.
            bind = ("127.0.0.1", self.host_port)
            container.ports[str(AMQP_PORT)] = bind  # type: ignore[assignment]
            container.with_kwargs(labels=owner_labels())
            self._container = container
            try:
                with warnings.catch_warnings():
                    # testcontainers' readiness helpers warn of their own deprecations.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    container.start()
            except BaseException:
                self.close()
                raise
        else:
            self._container.get_wrapped_container().start()
        if not wait_for_amqp("127.0.0.1", self.host_port, timeout):
            raise RuntimeError(f"RabbitMQ container did not answer within {timeout} s")

    def stop(self, timeout: int = 60) -> None:
        """Stop it as an orchestrator would: SIGTERM, then SIGKILL after ``timeout``."""
        self._container.get_wrapped_container().stop(timeout=timeout)

    def logs(self) -> str:
        """The container's output (for failure reports)."""
        raw = self._container.get_wrapped_container().logs()
        return bytes(raw).decode("utf-8", "replace")

    def close(self) -> None:
        """Remove the container (and its volumes); idempotent."""
        container, self._container = self._container, None
        if container is not None:
            try:
                with contextlib.suppress(Exception):
                    container.stop()
            finally:
                # stop() closes the client only after a successful removal; an
                # engine gone away must not leave its sockets to the GC.
                with contextlib.suppress(Exception):
                    container.get_docker_client().client.close()

    def __enter__(self) -> RabbitContainer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
