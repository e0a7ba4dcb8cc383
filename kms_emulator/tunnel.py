"""An HTTP CONNECT proxy that resolves one host name to the emulator.

A dedicated gateway is ``https://<instance-id>.cryptoservice.kms.aliyuncs.com``,
a name no test machine resolves. Every SDK can use an HTTPS proxy (their
``https_proxy`` option, or ``HTTPS_PROXY``): pointed at this tunnel, a client
asks ``CONNECT <instance host>:443`` and gets a byte pipe to the emulator's
TLS port, then verifies the certificate against the real host name, as it
would in a VPC. Any other destination is refused: this is no open proxy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

__all__ = ["ConnectTunnel"]

_MAX_HEAD = 8192
_TIMEOUT = 30.0
_LOG = logging.getLogger("envelope_mq.kms_emulator.tunnel")


class ConnectTunnel:
    """Accepts ``CONNECT <host>:<port>`` for ``host`` only, to ``target``."""

    def __init__(
        self, host: str, target: tuple[str, int], bind: str = "127.0.0.1"
    ) -> None:
        self._host = host.lower()
        self._target = target
        self._server = socket.create_server((bind, 0))
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(
            target=self._accept, name="kms-emulator-tunnel", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what an SDK's https_proxy takes."""
        host, port = self._server.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop accepting and cut every tunnel."""
        self._closed = True
        with contextlib.suppress(OSError):
            # close() alone does not wake a thread blocked in accept().
            self._server.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_TIMEOUT)
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] != b"CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host, _, _port = parts[1].decode("latin-1").rpartition(":")
            if host.lower() != self._host:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            upstream = socket.create_connection(self._target, timeout=_TIMEOUT)
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if rest:  # bytes the client sent without waiting for the 200
                upstream.sendall(rest)
            with self._lock:
                self._open.update((client, upstream))
            other = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            other.start()
            _pipe(client, upstream)
            other.join(timeout=_TIMEOUT)
        except (OSError, ValueError) as exc:
            _LOG.debug("tunnel ended: %s", exc)
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The CONNECT request's head, and whatever followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1024)
        if not chunk or len(data) + len(chunk) > _MAX_HEAD:
            raise ValueError("no complete CONNECT request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
