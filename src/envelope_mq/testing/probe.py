"""Cheap readiness probes: does an AMQP broker (or a Docker engine) answer?"""

from __future__ import annotations

import contextlib
import importlib
import random
import socket
import time

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


def docker_answers(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (never raises)."""
    try:
        # Imported by name: docker ships no type stubs, and only this ping uses it.
        docker = importlib.import_module("docker")
    except ImportError:
        return False
    with contextlib.suppress(Exception):  # any failure means "no usable engine"
        client = docker.from_env(timeout=int(max(timeout, 1)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    return False
