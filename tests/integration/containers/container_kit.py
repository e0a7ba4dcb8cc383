"""What the container group shares: skip-or-fail, and driving docker-compose.yml with
whichever compose implementation the engine has.

``docker compose`` on a Docker engine; podman-compose (from the test extras) on the
podman socket of scripts/containers.sh; ``EMQ_COMPOSE`` overrides both. podman runs
healthchecks only from systemd timers, which these machines lack, so on podman
:meth:`ComposeProject.healthy` runs the service's own healthcheck command itself
(``podman healthcheck run``); on Docker it reads the engine's verdict.

Every container and network of a project carries the owner labels of
:mod:`envelope_mq.testing.containers` (through an override file), so a crashed test's
stack is reaped like any other test container.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import docker
import pytest
import yaml

from envelope_mq.testing.containers import owner_labels

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def missing(reason: str) -> NoReturn:
    """Skip, or fail when CI=true: a CI run must never pass by skipping containers."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def compose_command(environ: Mapping[str, str]) -> tuple[list[str], str] | str:
    """(command, engine) of the compose implementation to use, or why there is none."""
    chosen = environ.get("EMQ_COMPOSE", "").strip()
    engine = "podman" if environ.get("EMQ_CONTAINER_ENGINE") == "podman" else "docker"
    if chosen:
        return shlex.split(chosen), engine
    if engine == "podman":
        beside = Path(sys.executable).with_name("podman-compose")
        found = str(beside) if beside.exists() else shutil.which("podman-compose")
        if found is None:
            return "podman-compose is not installed (pip install '.[test]')"
        return [found], engine
    probe = (
        subprocess.run(
            ["docker", "compose", "version"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if shutil.which("docker")
        else None
    )
    if probe is None or probe.returncode != 0:
        return (
            "no `docker compose` here (install the compose plugin, or set EMQ_COMPOSE)"
        )
    return ["docker", "compose"], engine


class ComposeProject:
    """One project (``-p NAME``) of docker-compose.yml plus a labelling override."""

    def __init__(
        self,
        command: Sequence[str],
        engine: str,
        name: str,
        environ: Mapping[str, str],
        workdir: Path,
    ) -> None:
        self.command = list(command)
        self.engine = engine
        self.name = name
        self.environ = dict(environ)
        self.override = workdir / "labels.override.yml"
        self.override.write_text(yaml.safe_dump(self._labels()), encoding="utf-8")
        self._client = docker.from_env(timeout=120)

    def _labels(self) -> dict[str, Any]:
        labels = owner_labels()
        services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
        return {
            "services": {name: {"labels": labels} for name in services},
            "networks": {"default": {"labels": labels}},
        }

    def run(self, *args: str, timeout: float = 600) -> str:
        """Run one compose command; its combined output (raises with it on failure)."""
        argv = [*self.command]
        if self.engine == "podman" and "podman-compose" in Path(argv[-1]).name:
            argv += ["--in-pod", "false"]  # pods would need labels of their own
        argv += ["-p", self.name, "-f", str(COMPOSE_FILE), "-f", str(self.override)]
        argv += list(args)
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {done.returncode}:\n{output[-4000:]}"
            )
        return output

    def container(self, service: str) -> Any:
        """The service's (first) container, through the engine's API."""
        found = self._client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.name}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        if not found:
            raise AssertionError(f"no container of service {service!r}")
        return found[0]

    def healthy(self, service: str) -> bool:
        """True when the service's own healthcheck passes."""
        container = self.container(service)
        if self.engine == "podman":
            check = subprocess.run(
                ["podman", "healthcheck", "run", container.name],
                capture_output=True,
                timeout=60,
                check=False,
            )
            return check.returncode == 0
        container.reload()
        health = container.attrs.get("State", {}).get("Health", {})
        return health.get("Status") == "healthy"

    def wait_healthy(self, services: Sequence[str], timeout: float = 300) -> None:
        """Wait until every service's healthcheck passes."""
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            waiting = [s for s in waiting if not self.healthy(s)]
            if waiting and time.monotonic() > deadline:
                logs = {s: self.logs(s)[-2000:] for s in waiting}
                raise AssertionError(f"not healthy after {timeout:.0f} s: {logs}")
            if waiting:
                time.sleep(1)

    def logs(self, service: str, *, stdout: bool = True, stderr: bool = True) -> str:
        """The service container's output so far."""
        raw = self.container(service).logs(stdout=stdout, stderr=stderr)
        return bytes(raw).decode("utf-8", "replace")

    def down(self) -> None:
        """Remove the project's containers, networks, volumes and the image it
        built; never raises."""
        with contextlib.suppress(Exception):
            self.run("--profile", "monitoring", "down", "-v", "-t", "5", timeout=300)
        with contextlib.suppress(Exception):
            self._client.images.remove(self.environ["EMQ_APP_IMAGE"], force=True)
        self._client.close()


@contextlib.contextmanager
def compose_project(
    command: Sequence[str],
    engine: str,
    environ: Mapping[str, str],
    workdir: Path,
) -> Iterator[ComposeProject]:
    """A project named after this process, taken down however the test ends."""
    name = f"emq-e2e-{os.getpid()}"
    # An image of this run's own, removed with the stack: builds never pile up.
    environ = {**environ, "EMQ_APP_IMAGE": f"localhost/{name}/envelope-mq:test"}
    project = ComposeProject(command, engine, name, environ, workdir)
    try:
        yield project
    finally:
        project.down()
