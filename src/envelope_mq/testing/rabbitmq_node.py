"""A private ``rabbitmq-server`` node: start, stop, crash, restart, cluster.

For tests that must stop or restart a broker without touching a shared one.
Each node has its own node name, AMQP and distribution ports (away from
35672-35682, which RabbitMQ's CLI tools take while they run) and its data under
a temporary directory. Debian's wrapper, run as root, switches to the
``rabbitmq`` user, so that user must own everything the node writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from envelope_mq.testing.probe import free_port, wait_for_amqp

__all__ = ["RabbitNode", "RabbitNodeError", "rabbitmq_server_unavailable_reason"]

_SERVER = "rabbitmq-server"
_CTL = "rabbitmqctl"
_SYSTEM_USER = "rabbitmq"


class RabbitNodeError(RuntimeError):
    """A private node failed to start, stop or run a command."""


def rabbitmq_server_unavailable_reason() -> str | None:
    """Why a private node cannot run here, or None when it can."""
    if shutil.which(_SERVER) is None or shutil.which(_CTL) is None:
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    if os.geteuid() != 0:
        # Debian's wrapper only runs as root or as the rabbitmq user.
        import pwd  # Unix only: imported here so that the module imports anywhere

        with contextlib.suppress(KeyError):
            if pwd.getpwuid(os.geteuid()).pw_name == _SYSTEM_USER:
                return None
        return "a private rabbitmq-server node needs root (Debian's wrapper)"
    return None


class RabbitNode:
    """One private RabbitMQ node listening on 127.0.0.1."""

    def __init__(
        self,
        *,
        name: str | None = None,
        port: int | None = None,
        dist_port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        management: bool = False,
    ) -> None:
        short = name or f"emq-{uuid.uuid4().hex[:8]}"
        self.node_name = short if "@" in short else f"{short}@localhost"
        self.port = port or free_port()
        self.dist_port = dist_port or free_port(exclude=frozenset({self.port}))
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="emq-rabbit-"))
        self._management = management
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest/guest, default vhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        """The file in which the node writes its own (Erlang VM) pid."""
        return self.base_dir / "rabbit.pid"

    def _environment(self) -> dict[str, str]:
        base = self.base_dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # Our own config: the system one pins the shared broker's listener.
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }

    def _prepare(self) -> None:
        base = self.base_dir
        (base / "mnesia").mkdir(parents=True, exist_ok=True)
        (base / "log").mkdir(exist_ok=True)
        plugins = "[rabbitmq_management]." if self._management else "[]."
        (base / "enabled_plugins").write_text(plugins + "\n")
        (base / "rabbitmq.conf").write_text(
            # A small tmpfs must not trip the disk alarm and block publishers.
            "disk_free_limit.absolute = 50MB\nloopback_users = none\n"
        )
        if os.geteuid() == 0:
            shutil.chown(base, _SYSTEM_USER, _SYSTEM_USER)
            for path in base.rglob("*"):
                shutil.chown(path, _SYSTEM_USER, _SYSTEM_USER)

    def start(self, timeout: float = 120.0) -> None:
        """Start the node and wait until it answers AMQP."""
        reason = rabbitmq_server_unavailable_reason()
        if reason is not None:
            raise RabbitNodeError(reason)
        self._prepare()
        with (self.base_dir / "server.out").open("ab") as out:
            # A session of its own: Ctrl-C in pytest must not kill the node
            # half-way; teardown stops it properly.
            self._process = subprocess.Popen(
                [_SERVER],
                env=self._environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_for_amqp("127.0.0.1", self.port, timeout):
            self.kill()
            raise RabbitNodeError(
                f"node {self.node_name} did not answer on port {self.port} within "
                f"{timeout:.0f} s; see {self.base_dir / 'log'}"
            )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` and return its output."""
        try:
            done = subprocess.run(
                [_CTL, "-n", self.node_name, *args],
                env=self._environment(),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitNodeError(f"rabbitmqctl {args[0]} timed out") from exc
        if done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} failed: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); kill it if that fails."""
        if self._process is None:
            return
        try:
            self.ctl("stop", str(self.pid_file), timeout=timeout)
            self._process.wait(timeout=timeout)
        except (RabbitNodeError, subprocess.TimeoutExpired):
            self.kill()
        self._process = None

    def kill(self) -> None:
        """Crash the node: SIGKILL its own VM (from its pid file), nothing else."""
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        if self._process is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=30)
        self._process = None
        # The VM may take a moment to release its port after SIGKILL.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._port_in_use():
            time.sleep(0.1)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start(timeout)

    def join_cluster(self, other: RabbitNode) -> None:
        """Make this (running) node join ``other``'s cluster."""
        self.ctl("stop_app")
        self.ctl("join_cluster", other.node_name)
        self.ctl("start_app")

    def close(self) -> None:
        """Stop the node and delete its data if we created the directory."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _port_in_use(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RabbitNode({self.node_name!r}, port={self.port})"
