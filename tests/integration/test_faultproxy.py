"""The fault proxy against a tiny local echo server: every toxic, both directions.

Time is only ever checked from below (a delay cannot make a run faster), so a
loaded machine cannot fail these tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from envelope_mq.testing.faultproxy import (
    Bandwidth,
    FaultProxy,
    Hold,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Timeout,
)

pytestmark = pytest.mark.integration

WAIT = 10.0  # generous upper bound for a socket read; never an assertion


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                with server.lock:
                    server.received.extend(data)
                if server.echo:
                    self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, echo: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.echo = echo
        self.lock = threading.Lock()
        self.received = bytearray()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address, seed=7) as running:
        yield running


@contextlib.contextmanager
def connect(proxy: FaultProxy) -> Iterator[socket.socket]:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=WAIT)
    try:
        yield sock
    finally:
        sock.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data.extend(chunk)
    return bytes(data)


def test_bytes_pass_unchanged_both_ways(proxy: FaultProxy) -> None:
    payload = os.urandom(1_000_000)
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = read_exactly(sock, len(payload))
        sender.join(WAIT)
    assert echoed == payload
    stats = proxy.stats()
    assert stats.bytes_upstream == stats.bytes_downstream == len(payload)
    assert stats.accepted == 1


def test_latency_delays_each_chunk_and_keeps_order(proxy: FaultProxy) -> None:
    messages = [f"message {i};".encode() for i in range(20)]
    with connect(proxy) as sock, proxy.toxic(Latency(150, jitter_ms=50)):
        started = time.monotonic()
        for message in messages:
            sock.sendall(message)
        echoed = read_exactly(sock, sum(len(m) for m in messages))
        elapsed = time.monotonic() - started
    assert echoed == b"".join(messages)
    assert elapsed >= 0.1  # at least latency - jitter


def test_latency_upstream_delays_the_request(proxy: FaultProxy) -> None:
    with connect(proxy) as sock, proxy.toxic(Latency(200), stream="upstream"):
        started = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        assert time.monotonic() - started >= 0.2


def test_bandwidth_caps_the_rate(proxy: FaultProxy) -> None:
    payload = os.urandom(60_000)
    with connect(proxy) as sock, proxy.toxic(Bandwidth(rate_kb=100)):
        started = time.monotonic()
        sock.sendall(payload)
        echoed = read_exactly(sock, len(payload))
        elapsed = time.monotonic() - started
    assert echoed == payload
    assert elapsed >= 0.5  # 60 kB at 100 kB/s is 0.6 s


def test_timeout_zero_is_a_black_hole_until_removed(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        name = proxy.add(Timeout(0))
        sock.sendall(b"lost")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.remove(name)
        sock.settimeout(WAIT)
        sock.sendall(b"found")
        assert read_exactly(sock, 5) == b"found"
    assert proxy.stats().bytes_dropped == 4


def test_hold_keeps_data_until_removed_then_delivers_it_in_order(
    proxy: FaultProxy,
) -> None:
    with connect(proxy) as first:
        name = proxy.add(Hold())
        first.sendall(b"one")
        first.sendall(b"two")
        first.settimeout(0.5)
        with pytest.raises(TimeoutError):
            first.recv(100)
        with connect(proxy) as later:  # connected while held: held too
            later.sendall(b"later")
            later.settimeout(0.5)
            with pytest.raises(TimeoutError):
                later.recv(100)
            proxy.remove(name)
            first.settimeout(WAIT)
            later.settimeout(WAIT)
            assert read_exactly(first, 6) == b"onetwo"
            assert read_exactly(later, 5) == b"later"
    assert proxy.stats().bytes_dropped == 0


def test_hold_survives_a_reset_for_links_made_after_it(proxy: FaultProxy) -> None:
    with connect(proxy) as cut:
        name = proxy.add(Hold())
        cut.sendall(b"lost with its link")
        assert proxy.wait_for_links(1, WAIT)
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            read_to_eof(cut)
    with connect(proxy) as sock:
        sock.sendall(b"kept")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.remove(name)
        sock.settimeout(WAIT)
        assert read_exactly(sock, 4) == b"kept"


def test_upstream_hold_keeps_data_from_the_server_until_removed(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as sock:
        name = proxy.add(Hold(), stream="upstream")
        sock.sendall(b"later")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert bytes(echo.received) == b""
        proxy.remove(name)
        sock.settimeout(WAIT)
        assert read_exactly(sock, 5) == b"later"


def test_timeout_closes_the_link_after_its_delay(proxy: FaultProxy) -> None:
    with connect(proxy) as sock, proxy.toxic(Timeout(200)):
        started = time.monotonic()
        sock.sendall(b"never echoed")
        assert read_to_eof(sock) == b""
        assert time.monotonic() - started >= 0.2
    assert proxy.stats().closed_by_toxic == 1


def test_upstream_timeout_keeps_data_from_the_server(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as sock, proxy.toxic(Timeout(0), stream="upstream"):
        sock.sendall(b"secret")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert bytes(echo.received) == b""


def test_reset_peer_now_resets_the_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        assert read_exactly(sock, 5) == b"hello"
        with proxy.toxic(ResetPeer()), pytest.raises(ConnectionResetError):
            read_to_eof(sock)
    assert proxy.stats().resets == 1


def test_reset_peer_after_a_delay(proxy: FaultProxy) -> None:
    with connect(proxy) as sock, proxy.toxic(ResetPeer(timeout_ms=300)):
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            read_to_eof(sock)
        assert time.monotonic() - started >= 0.3


def test_reset_peer_resets_new_connections_on_accept_without_dialling() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, never listening: refuses
        with FaultProxy(("127.0.0.1", port)) as proxy:
            proxy.add(ResetPeer())
            for _ in range(3):
                # the RST may beat connect() itself: reset either way
                with pytest.raises(ConnectionResetError), connect(proxy) as sock:
                    read_to_eof(sock)
            stats = proxy.stats()
    # upstream_failures would count a dial to the refusing port
    assert (stats.accepted, stats.resets, stats.upstream_failures) == (3, 3, 0)


def test_removing_reset_peer_lets_new_connections_through(proxy: FaultProxy) -> None:
    # The RST may beat connect() itself: either way the connection is reset.
    with (
        proxy.toxic(ResetPeer()),
        pytest.raises(ConnectionResetError),
        connect(proxy) as sock,
    ):
        read_to_eof(sock)
    with connect(proxy) as sock:
        sock.sendall(b"through")
        assert read_exactly(sock, 7) == b"through"


def test_reset_all_resets_open_links_and_new_ones_work(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        assert proxy.wait_for_links(2, WAIT)
        assert proxy.reset_all() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                read_to_eof(sock)
    with connect(proxy) as third:
        third.sendall(b"again")
        assert read_exactly(third, 5) == b"again"
    assert proxy.stats().resets == 2


def test_slicer_splits_writes_with_a_delay_and_keeps_bytes(proxy: FaultProxy) -> None:
    payload = os.urandom(1000)
    slicer = Slicer(average_size=100, size_variation=20, delay_us=20_000)
    with connect(proxy) as sock, proxy.toxic(slicer):
        started = time.monotonic()
        sock.sendall(payload)
        echoed = read_exactly(sock, len(payload))
        elapsed = time.monotonic() - started
    assert echoed == payload
    assert elapsed >= 0.02 * (1000 // 120)  # at least this many gaps between slices


def test_limit_data_closes_after_n_bytes(proxy: FaultProxy) -> None:
    with connect(proxy) as sock, proxy.toxic(LimitData(100)):
        sock.sendall(os.urandom(1000))
        assert len(read_to_eof(sock)) == 100
    assert proxy.stats().closed_by_toxic == 1


def test_down_drops_links_and_refuses_then_up_accepts(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert proxy.wait_for_links(1, WAIT)
        proxy.down()
        assert read_to_eof(sock) == b""
    assert not proxy.enabled
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=WAIT).close()
    proxy.up()
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert read_exactly(sock, 4) == b"back"
    assert proxy.stats().dropped_by_down == 1


def test_toxicity_picks_some_connections_only(proxy: FaultProxy) -> None:
    # LimitData(0) closes an affected link at its first byte: no waiting.
    proxy.add(LimitData(0), stream="upstream", toxicity=0.5)
    outcomes = []
    for _ in range(40):
        with connect(proxy) as sock:
            sock.sendall(b"x")
            outcomes.append(read_exactly(sock, 1))
    assert b"" in outcomes  # closed by the toxic
    assert b"x" in outcomes  # spared by it


def test_toxicity_zero_never_applies(proxy: FaultProxy) -> None:
    proxy.add(Timeout(0), toxicity=0.0)
    with connect(proxy) as sock:
        sock.sendall(b"through")
        assert read_exactly(sock, 7) == b"through"


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, never listening: refuses
        with FaultProxy(("127.0.0.1", port)) as proxy, connect(proxy) as sock:
            assert read_to_eof(sock) == b""
            assert proxy.stats().upstream_failures == 1


def test_removing_an_unknown_toxic_is_an_error(proxy: FaultProxy) -> None:
    with pytest.raises(KeyError):
        proxy.remove("nothing")


def test_invalid_toxics_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Latency(-1)
    with pytest.raises(ValueError, match="positive"):
        Bandwidth(0)
    with pytest.raises(ValueError, match="average_size"):
        Slicer(average_size=10, size_variation=10)


def test_rewrite_points_a_url_at_the_proxy(proxy: FaultProxy) -> None:
    rewritten = proxy.rewrite("amqp://guest:guest@10.0.0.9:5672/%2F?heartbeat=5")
    assert rewritten == f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F?heartbeat=5"
    assert proxy.rewrite("http://kms:8080") == f"http://127.0.0.1:{proxy.port}"


def test_a_broker_connection_through_the_proxy_works_and_can_be_reset() -> None:
    import pika
    import pika.exceptions

    from envelope_mq.testing.probe import amqp_answers

    if not amqp_answers("127.0.0.1", 5672):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    with FaultProxy(("127.0.0.1", 5672)) as broker_proxy:
        url = broker_proxy.rewrite("amqp://guest:guest@127.0.0.1:5672/%2F")
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            queue = channel.queue_declare("", exclusive=True).method.queue
            with broker_proxy.toxic(Slicer(average_size=7, delay_us=100)):
                channel.basic_publish("", queue, b"through the proxy")
                body = None
                deadline = time.monotonic() + WAIT
                while body is None and time.monotonic() < deadline:
                    _, _, body = channel.basic_get(queue, auto_ack=True)
            assert body == b"through the proxy"
            broker_proxy.reset_all()
            with pytest.raises(pika.exceptions.AMQPConnectionError):
                connection.process_data_events(time_limit=WAIT)
        finally:
            if connection.is_open:
                connection.close()
