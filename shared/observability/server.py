"""The metrics port: /metrics, /healthz and /readyz over plain HTTP.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: scrapes and probes never
touch the service's own threads, and a hung client cannot block the next one.
It serves only what :class:`~shared.observability.metrics.Metrics` and
:class:`~shared.observability.health.HealthState` already hold.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.observability.health import HealthReport, HealthState
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["ObservabilityServer"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry | None
    health: HealthState


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics" and self.server.registry is not None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(self.server.registry), content_type)
        elif path in ("/healthz", "/livez"):
            self._report(self.server.health.liveness())
        elif path == "/readyz":
            self._report(self.server.health.readiness())
        elif path == "/":
            self._send(
                HTTPStatus.OK,
                b"envelope-mq: /metrics /healthz /readyz\n",
                "text/plain; charset=utf-8",
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _report(self, report: HealthReport) -> None:
        status = HTTPStatus.OK if report.ok else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(report.to_json(), sort_keys=True).encode() + b"\n"
        self._send(status, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Probes every few seconds would drown the service's own lines.
        logger.debug("metrics port: " + format, *args)


class ObservabilityServer:
    """Serves /metrics (when given a registry), /healthz and /readyz on one port.

    ``port=0`` picks a free port; read it back from :attr:`port` or :attr:`url`.
    Binds 127.0.0.1 unless told otherwise: in a container, pass ``0.0.0.0`` so
    Prometheus can reach it.
    """

    def __init__(
        self,
        health: HealthState,
        registry: CollectorRegistry | None = None,
        *,
        port: int = 0,
        host: str = DEFAULT_HOST,
    ) -> None:
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._server.registry = registry
        self._server.health = health
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"emq-metrics-{self.port}",
            daemon=True,
        )
        self._started = False

    @property
    def host(self) -> str:
        """The address bound."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape: ``http://host:port/metrics``."""
        host = self.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}/metrics"

    def start(self) -> Self:
        """Start serving in a daemon thread."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._started:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ObservabilityServer({self.host}:{self.port})"
