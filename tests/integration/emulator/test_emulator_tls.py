"""Emulator only: HTTPS (``tls=True`` / ``--tls``) with every SDK flavour, and
what a client that does not trust the emulator's CA sends: a handshake, nothing more.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from envelope_mq.kms_emulator import Emulator
from envelope_mq.kms_emulator.tls import generate
from kms_clients import (
    FLAVOURS,
    Credentials,
    KmsTransportError,
    OpenClient,
    RawHttp,
    admin_seed,
)

pytestmark = pytest.mark.integration

AK = Credentials("tls-ak", "tls-secret-never-on-the-wire")
KEY_ID = "2a0b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
SEED = admin_seed(AK, KEY_ID, "alias/tls")
MARKER = b"plaintext-that-must-stay-inside-tls"
_TLS_HANDSHAKE = 0x16


class RecordingProxy:
    """A TCP relay that keeps every byte the client sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.sent = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self._upstream, timeout=10)
            threading.Thread(
                target=self._pipe, args=(client, upstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, False), daemon=True
            ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(seed=SEED, admin=False, tls=True) as emu:
        yield emu


@pytest.fixture
def stranger_ca(tmp_path: Path) -> str:
    """A CA that signed nothing the emulator serves."""
    return str(generate(tmp_path, ["127.0.0.1"]).ca_file)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_sdk_flavour_round_trips_a_data_key_over_verified_tls(
    emulator: Emulator, flavour: str, open_client: OpenClient
) -> None:
    assert emulator.ca_file is not None
    client = open_client(
        flavour, emulator.endpoint, AK, "cn-hangzhou", "https", str(emulator.ca_file)
    )
    made = client.call("GenerateDataKey", KeyId="alias/tls")
    opened = client.call("Decrypt", CiphertextBlob=made["CiphertextBlob"])
    assert opened["Plaintext"] == made["Plaintext"]
    assert opened["KeyId"] == KEY_ID


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("trust", ["stranger-ca", "system-cas"])
def test_a_client_not_trusting_the_ca_fails_and_sends_only_a_handshake(
    flavour: str, trust: str, stranger_ca: str, open_client: OpenClient
) -> None:
    # An emulator of its own: the new SDK pools TLS contexts per host:port
    # process-wide, and a CA trusted there earlier stays trusted.
    with Emulator(seed=SEED, admin=False, tls=True) as emu:
        proxy = RecordingProxy((emu.host, emu.port))
        try:
            client = open_client(
                flavour,
                f"127.0.0.1:{proxy.port}",
                AK,
                "cn-hangzhou",
                "https",
                stranger_ca if trust == "stranger-ca" else None,
            )
            text = base64.b64encode(MARKER).decode()
            with pytest.raises(KmsTransportError) as caught:
                client.call("Encrypt", KeyId=KEY_ID, Plaintext=text)
            answered = emu.request_count
        finally:
            proxy.close()
    assert "certificate verify failed" in str(caught.value).lower()
    assert answered == {}
    assert proxy.connections >= 1
    sent = bytes(proxy.sent)
    assert sent[0] == _TLS_HANDSHAKE
    for readable in (MARKER, base64.b64encode(MARKER), b"Encrypt", b"tls-ak"):
        assert readable not in sent


def test_a_plain_http_request_to_the_tls_port_is_never_answered_in_clear(
    emulator: Emulator,
) -> None:
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)  # at most a TLS alert
        except ConnectionResetError:
            answer = b""
    assert b"HTTP/1.1" not in answer
    assert b"Status" not in answer


def test_the_generated_certificate_names_the_loopback_addresses(
    emulator: Emulator,
) -> None:
    context = ssl.create_default_context(cafile=str(emulator.ca_file))
    for host in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection((host, emulator.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_given_certificate_files_are_served(tmp_path: Path) -> None:
    files = generate(tmp_path, ["kms.test.internal"])
    with Emulator(
        seed=SEED, tls=True, tls_cert=files.cert_file, tls_key=files.key_file
    ) as emu:
        assert emu.ca_file is None  # the caller holds the CA
        raw = RawHttp(emu.endpoint, tls=True, ca=str(files.ca_file))
        response = raw.send("GET", "/healthz")
        raw.close()
    assert response.status == 200


def test_tls_ca_out_keeps_a_copy_of_the_ca_and_the_rest_is_removed_on_stop(
    tmp_path: Path,
) -> None:
    out = tmp_path / "emulator-ca.pem"
    with Emulator(seed=SEED, tls=True, tls_ca_out=out) as emu:
        assert emu.ca_file == out
        generated = emu.tls_files
        assert generated is not None
        assert generated.ca_file is not None
        assert out.read_bytes() == generated.ca_file.read_bytes()
    assert out.exists()
    assert not generated.key_file.exists()
