"""Emulator only: ``-m envelope_mq.kms_emulator`` and ``envelope-mq kms-emulator``."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from envelope_mq.kms_emulator.tls import generate as generate_tls
from kms_clients import Credentials, KmsCallError, OpenClient, RawHttp

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DEV = Credentials("cli-test-ak", "cli-test-secret")


@contextmanager
def _emulator_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the emulator on a free port; yield it and its banner once it serves."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KMS_EMULATOR_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "envelope_mq.kms_emulator", "--port=0", *args],
        env={**environ, **(env or {})},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert process.stderr is not None
    # A thread reads stderr: select() on a buffered text pipe misses lines
    # already pulled into the buffer.
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stderr or ()],
        daemon=True,
    )
    reader.start()
    banner = ""
    try:
        while "ready; stop with" not in banner:
            try:
                banner += lines.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"no banner from the emulator: {banner}")
        yield process, banner
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        finally:
            process.kill()
            reader.join(timeout=5)
            process.stderr.close()


def _endpoint(banner: str) -> str:
    match = re.search(r"KMS_ENDPOINT=(\S+)", banner)
    assert match is not None
    return match.group(1)


def test_first_run_creates_a_key_and_serves_the_given_principal(
    open_client: OpenClient,
) -> None:
    env = {
        "KMS_EMULATOR_ACCESS_KEY_ID": DEV.access_key_id,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": DEV.access_key_secret,
    }
    with _emulator_process("--key-alias=alias/cli-test", env=env) as (process, banner):
        assert DEV.access_key_secret not in banner
        key_id = re.search(r"KMS_KEY_ID=alias/cli-test \(KeyId (\S+), created", banner)
        assert key_id is not None
        client = open_client(
            "new-sdk-acs3", _endpoint(banner), DEV, "cn-hangzhou", "http"
        )
        data_key = client.call("GenerateDataKey", KeyId="alias/cli-test")
        assert data_key["KeyId"] == key_id.group(1)
    assert process.returncode == 0


def test_clock_offset_flag_shifts_the_clock_the_signatures_are_checked_against(
    open_client: OpenClient,
) -> None:
    env = {
        "KMS_EMULATOR_ACCESS_KEY_ID": DEV.access_key_id,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": DEV.access_key_secret,
    }
    with _emulator_process("--clock-offset=-1200", env=env) as (_, banner):
        assert "clock shifted by -1200 s" in banner
        client = open_client(
            "old-sdk-v1", _endpoint(banner), DEV, "cn-hangzhou", "http"
        )
        with pytest.raises(KmsCallError) as caught:
            client.call("ListKeys")
    assert caught.value.code == "InvalidTimeStamp.Expired"


def test_tls_flag_serves_https_under_a_generated_ca_written_where_asked(
    open_client: OpenClient, tmp_path: Path
) -> None:
    env = {
        "KMS_EMULATOR_ACCESS_KEY_ID": DEV.access_key_id,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": DEV.access_key_secret,
    }
    ca_out = tmp_path / "kms-ca.pem"
    with _emulator_process("--tls", f"--tls-ca-out={ca_out}", env=env) as (_, banner):
        endpoint = _endpoint(banner)
        assert endpoint.startswith("https://127.0.0.1:")
        assert f"KMS_CA_FILE={ca_out}" in banner
        client = open_client(
            "new-sdk-acs3",
            endpoint.removeprefix("https://"),
            DEV,
            "cn-hangzhou",
            "https",
            str(ca_out),
        )
        assert client.call("ListKeys")["TotalCount"] == 1


def test_tls_cert_and_key_files_are_served(
    open_client: OpenClient, tmp_path: Path
) -> None:
    files = generate_tls(tmp_path, ["127.0.0.1"])
    env = {
        "KMS_EMULATOR_ACCESS_KEY_ID": DEV.access_key_id,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": DEV.access_key_secret,
    }
    args = ("--tls", f"--tls-cert={files.cert_file}", f"--tls-key={files.key_file}")
    with _emulator_process(*args, env=env) as (_, banner):
        assert "KMS_CA_FILE" not in banner
        client = open_client(
            "old-sdk-v1",
            _endpoint(banner).removeprefix("https://"),
            DEV,
            "cn-hangzhou",
            "https",
            str(files.ca_file),
        )
        assert client.call("ListKeys")["TotalCount"] == 1


def test_tls_options_without_tls_are_refused() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KMS_EMULATOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "envelope_mq.kms_emulator", "--auth=off",
         "--tls-ca-out=/tmp/x.pem"],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "need --tls" in result.stderr


def test_admin_token_is_written_to_the_token_file_and_required(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "admin-token"
    args = ("--auth=off", "--admin", f"--admin-token-file={token_file}")
    with _emulator_process(*args) as (_, banner):
        token = token_file.read_text().strip()
        assert f"/admin/ token: written to {token_file}" in banner
        assert token not in banner
        assert token_file.stat().st_mode & 0o077 == 0
        raw = RawHttp(_endpoint(banner))
        refused = raw.send("GET", "/admin/stats")
        allowed = raw.send(
            "GET", "/admin/stats", headers={"Authorization": f"Bearer {token}"}
        )
        raw.close()
    assert (refused.status, allowed.status) == (401, 200)


def test_admin_token_from_the_environment_is_never_printed() -> None:
    token = "an-admin-token-from-the-environment"
    env = {"KMS_EMULATOR_ADMIN_TOKEN": token}
    with _emulator_process("--auth=off", "--admin", env=env) as (_, banner):
        assert "the value of KMS_EMULATOR_ADMIN_TOKEN" in banner
        assert token not in banner
        raw = RawHttp(_endpoint(banner))
        answer = raw.send(
            "GET", "/admin/stats", headers={"Authorization": f"Bearer {token}"}
        )
        raw.close()
    assert answer.status == 200


def test_instance_id_flag_serves_a_dedicated_gateway(tmp_path: Path) -> None:
    instance = "kst-hzzclitest0001"
    ca = tmp_path / "instance-ca.pem"
    args = ("--auth=off", f"--instance-id={instance}", f"--tls-ca-out={ca}")
    with _emulator_process(*args) as (_, banner):
        assert _endpoint(banner).startswith("https://")
        proxy = re.search(r"HTTPS_PROXY=(\S+)", banner)
        assert proxy is not None
        assert f"https://{instance}.cryptoservice.kms.aliyuncs.com" in banner
        host, port = proxy.group(1).removeprefix("http://").split(":")
        context = ssl.create_default_context(cafile=str(ca))
        target = f"{instance}.cryptoservice.kms.aliyuncs.com"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"CONNECT {target}:443 HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
            with context.wrap_socket(sock, server_hostname=target) as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b'"Status":"OK"' in tls.recv(4096)


def test_the_compose_seed_serves_the_producer_and_consumer(
    open_client: OpenClient,
) -> None:
    seed = ROOT / "deploy" / "kms-seed.yaml"
    if not seed.exists():
        pytest.skip("deploy/kms-seed.yaml is not in this checkout")
    producer = Credentials(
        "emq-producer-dev", "emq-producer-dev-secret-not-for-production"
    )
    consumer = Credentials(
        "emq-consumer-dev", "emq-consumer-dev-secret-not-for-production"
    )
    with _emulator_process(f"--seed={seed}") as (_, banner):
        endpoint = _endpoint(banner)
        made = open_client(
            "old-sdk-v1", endpoint, producer, "cn-hangzhou", "http"
        ).call("GenerateDataKey", KeyId="alias/envelope-mq-demo")
        opened = open_client(
            "new-sdk-v1", endpoint, consumer, "cn-hangzhou", "http"
        ).call("Decrypt", CiphertextBlob=made["CiphertextBlob"])
        assert opened["Plaintext"] == made["Plaintext"]


def test_strict_auth_without_credentials_explains_what_to_do() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KMS_EMULATOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "envelope_mq.kms_emulator", "--port=0"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "KMS_EMULATOR_ACCESS_KEY_ID" in result.stderr
    assert "--auth off" in result.stderr


def test_the_subcommand_is_registered_with_envelope_mq() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "envelope_mq.shared.cli", "kms-emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--data", "--seed", "--auth", "--admin"):
        assert flag in result.stdout
