"""Cheap readiness probes: does an AMQP broker (or a Docker engine) answer?"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["amqp_answers", "docker_answers", "free_port", "wait_for_amqp"]

# AMQP 0-9-1 protocol header; a broker answers it with a Connection.Start
# method frame (frame type 1), which is the cheapest proof it is really AMQP.
_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1

# RabbitMQ's CLI tools take ports 35672-35682 while they run, the shared broker
# owns 5672/25672, and 4369 is epmd. Private nodes stay below the ephemeral range.
_RESERVED = frozenset({4369, 5672, 15672, 25672, *range(35672, 35683)})
_PORT_RANGE = (20000, 32000)


def amqp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something at ``host:port`` answers the AMQP protocol header."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PROTOCOL_HEADER)
            first = sock.recv(1)
    except OSError:
        return False
    return first == bytes([_FRAME_METHOD])


def wait_for_amqp(host: str, port: int, timeout: float) -> bool:
    """Poll until ``host:port`` answers AMQP or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if amqp_answers(host, port):
            return True
        time.sleep(0.25)
    return False


def free_port(exclude: frozenset[int] = frozenset()) -> int:
    """A currently free TCP port on 127.0.0.1 outside RabbitMQ's reserved ones."""

    low, high = _PORT_RANGE
    for _ in range(200):
        port = random.randint(low, high)
        if port in _RESERVED or port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port found for a private RabbitMQ node")


def docker_answers(
    timeout: float = 2.0, environ: Mapping[str, str] | None = None
) -> bool:
    """True when a Docker API (Docker, or podman's compatible socket) answers a
    ping at ``DOCKER_HOST`` (default ``unix:///var/run/docker.sock``); never raises.

    A raw HTTP/1.0 ping, not docker-py: its client leaves a socket open when the
    engine is absent, which an unraisable ResourceWarning would report later.
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "").strip() or "unix:///var/run/docker.sock"
    parts = urlsplit(host)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
        elif parts.scheme in ("tcp", "http") and parts.hostname:
            sock = socket.create_connection(
                (parts.hostname, parts.port or 2375), timeout=timeout
            )
        else:
            return False  # https/ssh engines: leave them to docker-py itself
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply[9:12] == b"200"
