"""The publisher replaces a channel the broker nacks on, instead of keeping it.

On RabbitMQ 3.10 a channel whose first publish to a quorum queue comes while
the queue's recorded leader is down nacks every later publish for as long as it
lives (tests/reliability/test_cluster_failover.py finds it in a real cluster).
Here a frame-rewriting proxy gives the publisher such a channel on one broker:
it turns the broker's basic.ack into basic.nack on the channels it is told to
spoil, and counts the messages published on each channel opened through it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from envelope_mq.producer import EncryptedPublisher, TransportOptions, transport
from envelope_mq.shared.amqp import Topology, connect_blocking
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import MessageNackedError, PublishNotConfirmedError
from envelope_mq.shared.kms import AliyunKms

pytestmark = pytest.mark.integration

_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_PROTOCOL_HEADER = 8  # b"AMQP\x00\x00\x09\x01", sent by the client only
_CHANNEL_OPEN_OK, _CHANNEL_CLOSE, _CHANNEL_CLOSE_OK = (20, 11), (20, 40), (20, 41)
_BASIC_PUBLISH, _BASIC_ACK, _BASIC_NACK = (60, 40), (60, 80), (60, 120)


def _frames(buffer: bytearray) -> Iterator[bytes]:
    """Take every complete frame off the front of ``buffer``."""
    while len(buffer) >= _HEAD.size:
        _, _, size = _HEAD.unpack_from(buffer)
        end = _HEAD.size + size + 1  # the frame-end octet
        if len(buffer) < end:
            return
        frame = bytes(buffer[:end])
        del buffer[:end]
        yield frame


def _method(frame: bytes) -> tuple[int, int] | None:
    if frame[0] != 1:  # not a method frame
        return None
    klass, method = struct.unpack_from(">HH", frame, _HEAD.size)
    return klass, method


def _nack(channel: int, tag: int, multiple: bool) -> bytes:
    payload = struct.pack(">HHQB", *_BASIC_NACK, tag, int(multiple))  # requeue=0
    return _HEAD.pack(1, channel, len(payload)) + payload + b"\xce"


class NackingProxy:
    """Forwards to RabbitMQ; the first ``spoiled`` channels opened get nacks only.

    ``silent_after_nack`` spoils differently: the first confirm becomes a nack
    of the channel's first message alone and the later ones are dropped, so
    whatever else that channel carried stays unconfirmed.
    """

    def __init__(self, url: str, *, spoiled: int, silent_after_nack: bool = False):
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self._spoiled = spoiled
        self._silent = silent_after_nack
        self._lock = threading.Lock()
        #: Messages published on each channel opened through the proxy, in order.
        self.published: list[int] = []
        self._open: dict[int, int] = {}  # channel number -> index in published
        self._nacked: set[int] = set()  # silent mode: channels that nacked once
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` through this proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            self._sockets += (client, upstream)
            for target, args in (
                (self._client_to_broker, (client, upstream)),
                (self._broker_to_client, (upstream, client)),
            ):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _client_to_broker(self, src: socket.socket, dst: socket.socket) -> None:
        buffer, skipped = bytearray(), False
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
                buffer += data
                if not skipped and len(buffer) >= _PROTOCOL_HEADER:
                    del buffer[:_PROTOCOL_HEADER]
                    skipped = True
                for frame in _frames(buffer) if skipped else ():
                    if _method(frame) == _BASIC_PUBLISH:
                        with self._lock:
                            self.published[self._open[_HEAD.unpack_from(frame)[1]]] += 1
        dst.close()

    def _broker_to_client(self, src: socket.socket, dst: socket.socket) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                buffer += data
                dst.sendall(b"".join(self._rewrite(f) for f in _frames(buffer)))
        dst.close()

    def _rewrite(self, frame: bytes) -> bytes:
        method, channel = _method(frame), _HEAD.unpack_from(frame)[1]
        with self._lock:
            if method == _CHANNEL_OPEN_OK:
                self._open[channel] = len(self.published)
                self.published.append(0)
            elif method in (_CHANNEL_CLOSE, _CHANNEL_CLOSE_OK):
                self._open.pop(channel, None)
                self._nacked.discard(channel)
            if method != _BASIC_ACK or self._open[channel] >= self._spoiled:
                return frame
            if not self._silent:
                # Same size and layout: delivery tag, then multiple in bit 0.
                return frame[:9] + struct.pack(">H", _BASIC_NACK[1]) + frame[11:]
            if channel in self._nacked:
                return b""
            self._nacked.add(channel)
            return _nack(channel, 1, multiple=False)

    def __enter__(self) -> NackingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sock in (self._listener, *self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextlib.contextmanager
def publisher(
    settings: Settings, proxy: NackingProxy, topology: Topology, **options: Any
) -> Iterator[EncryptedPublisher]:
    proxied = replace(settings, rabbitmq_urls=(proxy.url(settings.rabbitmq_urls[0]),))
    with (
        AliyunKms.from_settings(settings) as kms,
        EncryptedPublisher.from_settings(
            proxied,
            topology=topology,
            provider=kms,
            options=TransportOptions(**options),
        ) as pub,
    ):
        yield pub


def stored_ids(urls: tuple[str, ...], queue: str) -> set[str]:
    """The message_id of every message now in ``queue`` (left there)."""
    connection = connect_blocking(urls)
    try:
        channel = connection.channel()
        ids: set[str] = set()
        while (got := channel.basic_get(queue, auto_ack=False))[0] is not None:
            ids.add(got[1].message_id)
        return ids
    finally:
        connection.close()


def nacked(future: Future[str]) -> bool:
    return isinstance(future.exception(timeout=0), MessageNackedError)


def test_a_channel_that_nacks_every_publish_is_replaced(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    urls = emq_producer_settings.rabbitmq_urls
    with (
        NackingProxy(urls[0], spoiled=1) as proxy,
        publisher(
            emq_producer_settings, proxy, emq_amqp_topology, initial_backoff=0.05
        ) as pub,
    ):
        burst = [pub.publish(b"burst %d" % n) for n in range(500)]
        # Nobody looked at the nacked handles yet: flush says so, once.
        with pytest.raises(PublishNotConfirmedError, match="x nacked by the broker"):
            pub.flush(timeout=60)
        assert pub.flush(timeout=0)
        later = [pub.publish(b"later %d" % n) for n in range(200)]
        assert pub.flush(timeout=60)
        stats = pub.stats()
    # What went out on the spoiled channel failed, the handle's contract; what
    # was still waiting went out on the next channel, and so did the rest.
    failed = [f for f in burst if nacked(f)]
    assert len(failed) == proxy.published[0] >= 1
    assert proxy.published[1:] == [700 - len(failed)]
    confirmed = {f.result(timeout=0) for f in burst + later if not nacked(f)}
    assert len(confirmed) == 700 - len(failed)
    assert stats.replaced_channels == 1
    assert stats.republished == 0
    assert confirmed <= stored_ids(urls, emq_amqp_topology.queue)


def test_a_broker_that_nacks_everything_gets_one_probe_per_new_channel(
    emq_producer_settings: Settings, emq_amqp_topology: Topology
) -> None:
    with (
        NackingProxy(emq_producer_settings.rabbitmq_urls[0], spoiled=10**6) as proxy,
        publisher(
            emq_producer_settings,
            proxy,
            emq_amqp_topology,
            initial_backoff=0.01,
            max_backoff=0.05,
        ) as pub,
    ):
        with pytest.raises(MessageNackedError):
            pub.send(b"first")
        queued = [pub.publish(b"queued %d" % n) for n in range(5)]
        with pytest.raises(PublishNotConfirmedError, match=r"^5 published message"):
            pub.flush(timeout=60)
        assert pub.flush(timeout=0)
    assert all(nacked(f) for f in queued)
    # Each new channel carried one message, then was retired on its nack; no
    # channel was opened without a nack to cause it (one idle at most).
    assert proxy.published[:6] == [1] * 6
    assert sum(proxy.published) == 6
    assert len(proxy.published) <= 7


def test_what_a_retired_channel_left_unconfirmed_is_published_again(
    emq_producer_settings: Settings,
    emq_amqp_topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "_RETIRE_TIMEOUT", 0.5)
    with (
        NackingProxy(
            emq_producer_settings.rabbitmq_urls[0], spoiled=1, silent_after_nack=True
        ) as proxy,
        publisher(
            emq_producer_settings, proxy, emq_amqp_topology, initial_backoff=0.05
        ) as pub,
    ):
        burst = [pub.publish(b"burst %d" % n) for n in range(300)]
        with pytest.raises(PublishNotConfirmedError, match=r"^1 published message"):
            pub.flush(timeout=60)
        assert pub.flush(timeout=0)
        stats = pub.stats()
    # The first message was nacked; the others on that channel never heard
    # back, so they are in doubt and went out again on the next channel.
    assert nacked(burst[0])
    assert all(f.exception(timeout=0) is None for f in burst[1:])
    in_doubt = proxy.published[0] - 1
    assert stats.republished == in_doubt
    assert proxy.published[1:] == [299]
    assert stats.replaced_channels == 1
