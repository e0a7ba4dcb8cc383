"""The HTTP edge: a threading HTTP/1.1 server with keep-alive in front of Gateway.

Every answer, including the ones ``http.server`` itself produces for malformed
requests (bad request line, oversized headers, unknown methods), is the API's
JSON error shape. Reads time out and bodies are bounded, so no client can hang
a worker forever or make the emulator buffer without limit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from envelope_mq.kms_emulator.gateway import Gateway
from envelope_mq.kms_emulator.reply import CONTENT_TYPE, Reply, encode_json, error_reply

__all__ = ["MAX_BODY_BYTES", "KmsHttpServer"]

# Plaintext (6 KB) and EncryptionContext (8,192 chars) percent-encoded stay far
# below this; anything larger is not a KMS request.
MAX_BODY_BYTES = 256 * 1024
IDLE_TIMEOUT_SECONDS = 30.0
_LOG = logging.getLogger("envelope_mq.kms_emulator.server")
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kms-emulator"
    sys_version = ""
    timeout = IDLE_TIMEOUT_SECONDS
    disable_nagle_algorithm = True
    server: KmsHttpServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        gateway = self.server.gateway
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(
                gateway.error(411, "MissingContentLength", "Send Content-Length.")
            )
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            # The body is not read, so the connection cannot be reused.
            self.close_connection = True
            self._send(
                gateway.error(
                    413,
                    "InvalidParameter",
                    f"The request body must be 0 to {MAX_BODY_BYTES} bytes.",
                )
            )
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        headers: dict[str, str] = {}
        for name in {n.lower() for n in self.headers}:
            values = self.headers.get_all(name) or []
            # Repeated headers are signed joined by "," in sorted order (ACS3).
            headers[name] = ",".join(sorted(str(v).strip() for v in values))
        reply = gateway.handle(self.command, self.path, headers, body)
        if reply.abort:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        payload = encode_json(reply.body)
        if getattr(self, "command", "") == "HEAD":
            payload = b""  # a HEAD answer has headers only
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = ""
        head = (
            f"{self.protocol_version} {reply.status} {phrase}\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'close' if self.close_connection else 'keep-alive'}\r\n"
        )
        request_id = reply.body.get("RequestId")
        if isinstance(request_id, str):
            head += f"x-acs-request-id: {request_id}\r\n"
        self.log_request(reply.status)
        # One write per answer: with Nagle off, headers and body in separate
        # segments would cost a round trip on some clients.
        self.wfile.write(head.encode("latin-1") + b"\r\n" + payload)

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None
    ) -> None:
        """http.server's own errors (bad request line, 431, 501...) as API JSON."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method no handler serves
            status, api_code = 405, "MethodNotAllowed"
        else:
            status, api_code = (code if code < 500 else 400), "InvalidParameter"
        reply = error_reply(
            status,
            api_code,
            message or HTTPStatus(status).phrase,
            host_id=self.server.gateway.host_id,
        )
        self._send(reply)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The audit log covers API requests; per-request access lines stay at DEBUG.
        if _LOG.isEnabledFor(logging.DEBUG):
            _LOG.debug("%s %s %s", self.command, code, self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("%s " + format, self.client_address[0], *args)


class KmsHttpServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer serving one Gateway, tracking its connections."""

    daemon_threads = True
    # Keep-alive clients may hold a connection open; stopping must not wait for them.
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        gateway: Gateway,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.gateway = gateway
        self.ssl_context = ssl_context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, tracking it so that shutdown can close it."""
        if self.ssl_context is not None:
            # The handshake runs here, in the connection's own thread, so a
            # client that never finishes it cannot stall the accept loop.
            request.settimeout(IDLE_TIMEOUT_SECONDS)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                # Plain HTTP, an untrusting client or a scanner: nothing is read.
                _LOG.debug("TLS handshake with %s failed: %s", client_address, exc)
                self.shutdown_request(request)
                return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed outside the gateway (reset, timeout): log, go on."""
        _LOG.debug(
            "connection from %s ended with an error", client_address, exc_info=True
        )

    def close_connections(self) -> None:
        """Shut every open connection down (used on stop and restart)."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)
