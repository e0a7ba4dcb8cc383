"""The ECS instance metadata service's RAM-role part, IMDSv2 only.

An ECS instance with a RAM role reads temporary credentials from
``http://100.100.100.200/latest/meta-data/ram/security-credentials/<role>``
after ``PUT /latest/api/token``. This server answers those three paths for one
seeded role; every GET must carry a token from the PUT (the hardened mode
Alibaba recommends), so a request forged by a web page or an SSRF without the
custom header gets nothing. Served on its own listener, usually bound to
100.100.100.200:80 inside a network namespace a test creates.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.seed import RoleSeed
from envelope_mq.kms_emulator.sts import StsService

__all__ = ["MetadataServer"]

_TOKEN_PATH = "/latest/api/token"  # noqa: S105 (a URL path)
_ROLES_PATH = "/latest/meta-data/ram/security-credentials/"
_MAX_TTL = 21600
_MAX_TOKENS = 10_000


class MetadataServer(ThreadingHTTPServer):
    """IMDSv2 tokens and the credentials of ``role``, on ``address``."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        sts: StsService,
        role: RoleSeed,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sts = sts
        self.role = role
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kms-emulator-metadata",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the address."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def new_token(self, ttl: int) -> str:
        """A session token valid for ``ttl`` seconds."""
        now = self._clock()
        token = secrets.token_urlsafe(32)
        with self._lock:
            for old in [t for t, end in self._tokens.items() if end < now]:
                del self._tokens[old]
            if len(self._tokens) >= _MAX_TOKENS:
                raise ValueError("too many metadata tokens")
            self._tokens[token] = now + ttl
        return token

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` came from PUT /latest/api/token and is still valid."""
        if not token:
            return False
        with self._lock:
            end = self._tokens.get(token)
        return end is not None and self._clock() < end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kms-emulator-metadata"
    sys_version = ""
    timeout = 30.0
    server: MetadataServer

    def do_PUT(self) -> None:
        if self.path != _TOKEN_PATH:
            self._answer(404, "Not Found")
            return
        try:
            ttl = int(self.headers.get("X-aliyun-ecs-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= _MAX_TTL:
            self._answer(400, "Bad Request")
            return
        try:
            self._answer(200, self.server.new_token(ttl))
        except ValueError:
            self._answer(429, "Too Many Requests")

    def do_GET(self) -> None:
        if not self.server.valid(self.headers.get("X-aliyun-ecs-metadata-token")):
            self._answer(401, "Unauthorized")
            return
        role = self.server.role
        if self.path == _ROLES_PATH:
            self._answer(200, role.name)
        elif self.path == _ROLES_PATH + role.name:
            try:
                body: dict[str, Any] = self.server.sts.session_credentials(
                    role, "ecs-instance"
                )
            except ApiError as exc:
                self._answer(exc.status, exc.message)
                return
            self._answer(200, json.dumps(body), "application/json")
        else:
            self._answer(404, "Not Found")

    def _answer(self, status: int, text: str, kind: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the paths carry no secrets, but the answers do."""
