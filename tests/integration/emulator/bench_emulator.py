"""Throughput and latency of the KMS emulator: 8 keep-alive clients, signed v1 calls.

    .venv/bin/python tests/integration/emulator/bench_emulator.py [--seconds 10]

Starts ``python -m envelope_mq.kms_emulator`` in a subprocess (so the load
generator does not share its GIL), then alternates GenerateDataKey and Decrypt
from 8 threads, each on its own HTTP/1.1 keep-alive connection, and prints
requests/s and percentiles.
Not collected by pytest: a timed figure is reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import quote, urlencode

AK, SECRET = "bench-ak", "bench-secret"


def _enc(text: str) -> str:
    return quote(text, safe="~")


def signed_query(action: str, params: dict[str, str]) -> str:
    """A v1 HMAC-SHA1 signed query string, as the old SDK builds it."""
    full = {
        **params,
        "Action": action,
        "Version": "2016-01-20",
        "Format": "JSON",
        "AccessKeyId": AK,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    canonical = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(full.items()))
    to_sign = f"POST&%2F&{_enc(canonical)}"
    mac = hmac.new(f"{SECRET}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    full["Signature"] = base64.b64encode(mac).decode()
    return urlencode(full, quote_via=quote)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(port: int, stop: threading.Event, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    context = json.dumps({"app": "bench"})
    blob = ""
    while not stop.is_set():
        if blob:
            query = signed_query(
                "Decrypt", {"CiphertextBlob": blob, "EncryptionContext": context}
            )
        else:
            query = signed_query(
                "GenerateDataKey",
                {"KeyId": "alias/bench", "EncryptionContext": context},
            )
        started = time.perf_counter()
        conn.request("POST", "/?" + query, headers={"Content-Length": "0"})
        response = conn.getresponse()
        body = json.loads(response.read())
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(body)
        blob = "" if blob else body["CiphertextBlob"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--log-level", default="INFO", help="INFO: with audit lines")
    args = parser.parse_args()
    port = _free_port()
    env = {
        **os.environ,
        "KMS_EMULATOR_ACCESS_KEY_ID": AK,
        "KMS_EMULATOR_ACCESS_KEY_SECRET": SECRET,
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kms_emulator",
            f"--port={port}",
            "--key-alias=alias/bench",
            f"--log-level={args.log_level}",
        ],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(0.5)  # the first key is created right after the port opens
        stop = threading.Event()
        per_thread: list[list[float]] = [[] for _ in range(args.clients)]
        threads = [
            threading.Thread(target=_worker, args=(port, stop, lat))
            for lat in per_thread
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(10)
    latencies = sorted(x for lat in per_thread for x in lat)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{len(latencies)} requests in {elapsed:.1f} s with {args.clients} clients: "
        f"{len(latencies) / elapsed:.0f} req/s; latency ms p50 {q[49] * 1000:.2f} "
        f"p90 {q[89] * 1000:.2f} p99 {q[98] * 1000:.2f} max {latencies[-1] * 1000:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
