"""An ``https://`` KMS endpoint is TLS on the wire, or the call fails.

A raw listener records the first bytes the SDK sends: in front of a plain-HTTP
server an ``https://`` endpoint must open with a TLS ClientHello, carry no
readable request, and fail instead of falling back to HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from envelope_mq.shared.errors import KmsError
from envelope_mq.shared.kms import AliyunKms

SECRET = "tls-test-secret-never-shown"
_TLS_HANDSHAKE = 0x16
_PLAIN_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


class _Recorder:
    """Accepts connections, keeps what each one sent, answers plain HTTP."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                self.received.append(data)
                # What a plain-HTTP emulator would answer to anything.
                with contextlib.suppress(OSError):
                    conn.sendall(_PLAIN_ANSWER)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    yield server
    server.close()


def test_https_endpoint_sends_a_tls_hello_and_nothing_readable(
    recorder: _Recorder,
) -> None:
    kms = AliyunKms(
        "tls-ak", SECRET, endpoint=f"https://127.0.0.1:{recorder.port}", max_attempts=1
    )
    with kms, pytest.raises(KmsError):
        kms.generate_data_key("alias/some-key", {"tenant": "a"})
    assert recorder.received, "the client never connected"
    for data in recorder.received:
        assert data[0] == _TLS_HANDSHAKE, data[:16]
        for readable in (b"GenerateDataKey", b"tls-ak", b"alias", b"HTTP/1.1"):
            assert readable not in data


@pytest.mark.parametrize(
    "endpoint", ["kms.example.com", "kms-vpc.cn-hangzhou.aliyuncs.com:8443"]
)
def test_a_bare_remote_endpoint_keeps_tls(endpoint: str) -> None:
    assert repr(AliyunKms("ak", SECRET, endpoint=endpoint)).startswith(
        "AliyunKms(https://"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_a_bare_loopback_endpoint_is_plain_http(host: str) -> None:
    assert repr(AliyunKms("ak", SECRET, endpoint=f"{host}:8600")) == (
        f"AliyunKms(http://{host}:8600)"
    )
