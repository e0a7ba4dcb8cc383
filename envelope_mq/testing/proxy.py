"""A tiny in-process TCP proxy whose connections a test can cut.

Put it between a client and RabbitMQ (or the KMS emulator) to simulate a lost
connection: :meth:`TcpProxy.cut` resets every open connection at once, the way
a crashed load balancer or a network partition would; :meth:`hold_replies`
stops forwarding what the server says (confirms, heartbeats) while the client's
data still flows; and :attr:`refusing` turns new connections away until the
test lets them through again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 256 * 1024


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target``; cut or refuse connections on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.refusing = False
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._replies = threading.Event()
        self._replies.set()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        """A proxy in front of the host and port of an AMQP URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672)

    def proxied_url(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    @property
    def open_connections(self) -> int:
        """How many client connections are currently forwarded."""
        with self._lock:
            return len(self._pairs)

    def hold_replies(self) -> None:
        """Hold back server-to-client data (not lost) until :meth:`release_replies`."""
        self._replies.clear()

    def release_replies(self) -> None:
        """Forward server-to-client data again."""
        self._replies.set()

    def cut(self) -> int:
        """Reset every open connection (TCP RST both ways); return how many.

        Replies held back on those connections are dropped with them.
        """
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        held = not self._replies.is_set()
        self._replies.set()  # wake held pumps: their sockets are gone, they exit
        if held:
            self._replies.clear()  # new connections stay held until released
        return len(pairs)

    def close(self) -> None:
        """Stop accepting and reset everything still open."""
        self._closed = True
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            if self.refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            for src, dst, held in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(src, dst, held), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, holdable: bool) -> None:
        try:
            while data := src.recv(_CHUNK):
                if holdable:
                    self._replies.wait()
                dst.sendall(data)
        except OSError:
            pass  # the other side, or cut(), closed the socket
        with self._lock:
            pairs = [p for p in self._pairs if src in p]
            self._pairs = [p for p in self._pairs if src not in p]
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    # SO_LINGER (on, 0 s) makes close() send RST instead of FIN: an abrupt loss.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
