"""The broker CPU probe finds the process listening on a local port and reads
its CPU time; elsewhere it says why there is no figure."""

from __future__ import annotations

import socket
import time

from envelope_mq.bench.broker_cpu import BrokerCpu, find_broker_cpu


def test_the_process_listening_on_a_local_port_is_found_and_read() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = find_broker_cpu("127.0.0.1", port)
        assert isinstance(probe, BrokerCpu)
        before = probe.seconds()
        deadline = time.process_time() + 0.05
        while time.process_time() < deadline:
            pass
        assert probe.seconds() > before


def test_a_remote_broker_has_no_figure_and_says_why() -> None:
    assert find_broker_cpu("rabbit.example", 5672) == (
        "the broker is on rabbit.example, not this machine"
    )


def test_a_port_nobody_listens_on_has_no_figure() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    reason = find_broker_cpu("localhost", port)
    assert reason == f"no process on this machine listens on port {port}"
