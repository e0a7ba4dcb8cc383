"""The KMS emulator under load: GenerateDataKey, then Decrypt, from 8 clients.

The emulator runs as its own process (``python -m envelope_mq.kms_emulator``, strict
signatures, default logging), as it does beside a test suite, so the load
generator does not share its interpreter. Each client is a thread with its own
HTTP/1.1 keep-alive connection sending signed requests (signature v1, as
aliyun-python-sdk-core signs them). The clients are deliberately lighter than
the SDK, so that the figures describe the emulator rather than the client; the
latency each client sees still includes its own share of this process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote, urlencode

from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, percentile, rate
from envelope_mq.progress import Progress

__all__ = ["run_emulator_load"]

CLIENTS = 8
_ALIAS = "alias/envelope-mq-bench"
_CONTEXT = json.dumps({"app": "envelope-mq-bench"})
_START_SECONDS = 30.0


@dataclass(frozen=True)
class _Server:
    host: str
    port: int
    access_key_id: str
    secret: str


def _percent(text: str) -> str:
    return quote(text, safe="~")


def signed_query(server: _Server, action: str, params: dict[str, str]) -> str:
    """A signature-v1 (HMAC-SHA1) query string for one RPC call."""
    full = {
        **params,
        "Action": action,
        "Version": "2016-01-20",
        "Format": "JSON",
        "AccessKeyId": server.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    canonical = "&".join(
        f"{_percent(k)}={_percent(v)}" for k, v in sorted(full.items())
    )
    to_sign = f"POST&%2F&{_percent(canonical)}"
    mac = hmac.new(f"{server.secret}&".encode(), to_sign.encode(), hashlib.sha1)
    full["Signature"] = base64.b64encode(mac.digest()).decode()
    return urlencode(full, quote_via=quote)


class _Client:
    """One keep-alive connection to the emulator."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._connection = http.client.HTTPConnection(
            server.host, server.port, timeout=30
        )

    def call(self, action: str, params: dict[str, str]) -> dict[str, object]:
        query = signed_query(self._server, action, params)
        self._connection.request("POST", "/?" + query, headers={"Content-Length": "0"})
        response = self._connection.getresponse()
        body: dict[str, object] = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{action}: HTTP {response.status} {body.get('Code')}")
        return body

    def close(self) -> None:
        self._connection.close()


@contextmanager
def _emulator_process() -> Iterator[_Server]:
    """Start the emulator in its own process on a free port; stop it after."""
    access_key_id = f"bench-{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    env = {
        **os.environ,
        "KMS_EMULATOR_ACCESS_KEY_ID": access_key_id,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": secret,
    }
    command = [sys.executable, "-m", "envelope_mq.kms_emulator", "--port", "0"]
    command += ["--key-alias", _ALIAS]
    # Its log (one audit line per request at the default level) goes to a
    # file: a pipe nobody drains would block the emulator.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stderr=log, env=env)
        try:
            port = _wait_for_banner(log, process)
            yield _Server("127.0.0.1", port, access_key_id, secret)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_banner(log: IO[str], process: subprocess.Popen[bytes]) -> int:
    """The port, once the emulator says it listens and its key exists."""
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        endpoint = re.search(r"KMS_ENDPOINT=[\w.]+:(\d+)", text)
        if endpoint and "KMS_KEY_ID=" in text:
            return int(endpoint.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the KMS emulator exited: {text.strip()[-500:]}")
        time.sleep(0.05)
    raise RuntimeError("the KMS emulator did not start within 30 s")


def _load(
    clients: list[_Client],
    action: str,
    params: list[dict[str, str]],
    seconds: float,
) -> tuple[int, float, list[float]]:
    """Run ``action`` from every client for ``seconds``: count, elapsed, latencies."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []

    def work(client: _Client, mine: list[float], request: dict[str, str]) -> None:
        try:
            while not stop.is_set():
                started = time.perf_counter()
                client.call(action, request)
                mine.append(time.perf_counter() - started)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(c, lat, p), name=f"bench-kms-{i}")
        for i, (c, lat, p) in enumerate(zip(clients, latencies, params, strict=True))
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a KMS client failed: {errors[0]}") from errors[0]
    flat = [x for lat in latencies for x in lat]
    return len(flat), elapsed, flat


def run_emulator_load(report: Report, seconds: float) -> None:
    """Load the emulator with each action in turn; add figures and targets."""
    section = f"KMS emulator, {CLIENTS} concurrent clients"
    with (
        Progress("KMS emulator load", 2, announce=True) as bar,
        _emulator_process() as server,
    ):
        clients = [_Client(server) for _ in range(CLIENTS)]
        try:
            generate = {"KeyId": _ALIAS, "EncryptionContext": _CONTEXT}
            blobs = [
                {
                    "CiphertextBlob": str(
                        c.call("GenerateDataKey", generate)["CiphertextBlob"]
                    ),
                    "EncryptionContext": _CONTEXT,
                }
                for c in clients
            ]
            phases = (
                ("GenerateDataKey", [generate] * CLIENTS),
                ("Decrypt", blobs),
            )
            for action, params in phases:
                count, elapsed, latencies = _load(clients, action, params, seconds)
                bar.advance()
                per_second = rate(count, elapsed)
                p99 = percentile(latencies, 99) * 1000
                report.add(section, f"{action} requests", per_second, "req/s")
                report.add(
                    section, f"{action} latency p50", median(latencies) * 1000, "ms"
                )
                report.add(section, f"{action} latency p99", p99, "ms")
                report.check(
                    f"emulator {action} throughput", per_second, ">=", 1000, "req/s"
                )
                report.check(f"emulator {action} latency p99", p99, "<=", 20, "ms")
        finally:
            for client in clients:
                client.close()
