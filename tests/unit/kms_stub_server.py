"""A scripted stand-in for KMS on 127.0.0.1, for driving the real AcsClient.

It answers each request with the next scripted :class:`Reply` (the documented
error bodies of kms-api.md §4, or a success body) and records what arrived.
It checks no signature: the emulator's tests do that.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict[str, object] | bytes = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the answer (to trigger read timeouts)


def error_reply(status: int, code: str, message: str) -> Reply:
    return Reply(
        status,
        {
            "RequestId": str(uuid.uuid4()),
            "HostId": "kms.cn-hangzhou.aliyuncs.com",
            "Code": code,
            "Message": message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}",
        },
    )


@dataclass(frozen=True)
class Seen:
    action: str
    params: dict[str, str]
    headers: dict[str, str]


class StubKms:
    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.requests: list[Seen] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stub._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        params = dict(parse_qsl(urlsplit(handler.path).query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            body = handler.rfile.read(length).decode("utf-8")
            params.update(parse_qsl(body, keep_blank_values=True))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        action = params.get("Action") or headers.get("x-acs-action", "")
        with self._lock:
            self.requests.append(Seen(action, params, headers))
            reply = (
                self._replies.popleft()
                if self._replies
                else error_reply(400, "Stub.NotScripted", "no reply scripted")
            )
        if reply.delay:
            self._closing.wait(reply.delay)
        raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json;charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (read timeout) before the answer
