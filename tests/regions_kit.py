"""Emulators acting as KMS regions, for the multi-region tests (tests/ is on sys.path).

Each region is its own emulator with its own master key (a key made in one
exists in no other), and the same two principals in each, as one RAM user
is valid in every region: the producer may GenerateDataKey and Encrypt, the
consumer Decrypt and DescribeKey. :func:`region_emulator` runs one in this
process; :class:`RegionProcess` runs one as a process of its own, to be
killed with SIGKILL. Most tests take two: :func:`two_regions` (in process)
or :func:`two_region_processes`, Shanghai first and Beijing second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envelope_mq.shared.config import Settings

from envelope_mq.testing.kms import Credentials, Role, emulator_seed

__all__ = [
    "Principals",
    "Region",
    "RegionProcess",
    "new_principals",
    "region_emulator",
    "region_seed",
    "region_settings",
    "two_region_processes",
    "two_regions",
]

_PATIENCE = 60.0
_ADMIN_TOKEN = "regions-kit-admin-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Principals:
    """The producer's and the consumer's AccessKeys, the same in every region."""

    producer: Credentials
    consumer: Credentials


def new_principals() -> Principals:
    """Fresh random AccessKeys for one test."""
    tag = uuid.uuid4().hex[:12]
    return Principals(
        Credentials(f"emq-producer-{tag}", uuid.uuid4().hex),
        Credentials(f"emq-consumer-{tag}", uuid.uuid4().hex),
    )


def region_seed(key_id: str, principals: Principals) -> dict[str, Any]:
    """One region's seed: its own key, both principals with multi-region rights."""
    seed = emulator_seed(
        key_id, f"alias/emq-{key_id[:8]}", principals.producer, principals.consumer
    )
    producer, consumer = seed["principals"]
    producer["actions"] = ["GenerateDataKey", "Encrypt"]
    consumer["actions"] = ["Decrypt", "DescribeKey"]
    return seed


@dataclass
class Region:
    """One region as a test sees it: its name, endpoint and master key."""

    name: str
    endpoint: str
    key_id: str
    emulator: Any = None  # the in-process Emulator, when there is one
    ca_file: str | None = None  # with TLS: the emulator's CA

    def requests(self, action: str) -> int:
        """How many ``action`` requests this region's emulator has answered."""
        counts: dict[str, int] = self.emulator.request_count
        return counts.get(action, 0)


@contextlib.contextmanager
def region_emulator(
    name: str, principals: Principals, *, tls: bool = False
) -> Iterator[Region]:
    """An in-process emulator answering as region ``name`` (HTTPS with ``tls``)."""
    from envelope_mq.kms_emulator import Emulator

    key_id = str(uuid.uuid4())
    with Emulator(
        seed=region_seed(key_id, principals),
        auth="strict",
        admin=True,
        port=0,
        region_id=name,
        tls=tls,
    ) as emulator:
        ca_file = str(emulator.ca_file) if tls else None
        endpoint = emulator.url if tls else emulator.endpoint
        yield Region(name, endpoint, key_id, emulator, ca_file)


@contextlib.contextmanager
def two_regions(principals: Principals) -> Iterator[tuple[Region, Region]]:
    """Shanghai and Beijing, each an emulator in this process."""
    with (
        region_emulator("cn-shanghai", principals) as shanghai,
        region_emulator("cn-beijing", principals) as beijing,
    ):
        yield shanghai, beijing


class RegionProcess:
    """An emulator process answering as one region; :meth:`kill` is SIGKILL."""

    def __init__(self, name: str, principals: Principals, workdir: Path) -> None:
        self.name = name
        self.key_id = str(uuid.uuid4())
        self._dir = workdir / f"region-{name}"
        self._dir.mkdir(parents=True, exist_ok=True)
        seed = self._dir / "seed.json"
        seed.write_text(json.dumps(region_seed(self.key_id, principals)))
        self._log = self._dir / "emulator.log"
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "envelope_mq.kms_emulator",
                    "--port=0",
                    f"--seed={seed}",
                    f"--region={name}",
                    "--admin",
                    "--log-level=WARNING",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "KMS_EMULATOR_ADMIN_TOKEN": _ADMIN_TOKEN},
            )
        self.endpoint = self._wait_for_banner()

    @property
    def region(self) -> Region:
        """This region as the tests see it."""
        return Region(self.name, self.endpoint, self.key_id)

    def _wait_for_banner(self) -> str:
        deadline = time.monotonic() + _PATIENCE
        while time.monotonic() < deadline:
            text = self._log.read_text(errors="replace")
            if "ready;" in text:
                for line in text.splitlines():
                    if line.strip().startswith("KMS_ENDPOINT="):
                        return line.strip().removeprefix("KMS_ENDPOINT=")
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise AssertionError(f"emulator for {self.name} did not start: {text}")

    def requests(self) -> dict[str, int]:
        """The emulator's request counts by action (its /admin/stats)."""
        request = urllib.request.Request(
            f"http://{self.endpoint}/admin/stats",
            headers={"Authorization": f"Bearer {_ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            counts: dict[str, int] = json.load(answer)["Requests"]
        return counts

    def kill(self) -> None:
        """SIGKILL, by pid: no goodbye, sockets left to the kernel."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(_PATIENCE)

    def close(self) -> None:
        """Stop it if it still runs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_PATIENCE)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RegionProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def two_region_processes(
    principals: Principals, workdir: Path
) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    """Shanghai and Beijing, each an emulator process (logs under ``workdir``)."""
    with (
        RegionProcess("cn-shanghai", principals, workdir) as shanghai,
        RegionProcess("cn-beijing", principals, workdir) as beijing,
    ):
        yield shanghai, beijing


def region_settings(
    role: Role,
    principals: Principals,
    rabbitmq_urls: Sequence[str],
    regions: Sequence[Region],
    *,
    wrap: bool = True,
    **changes: Any,
) -> Settings:
    """Settings with ``regions[0]`` as the own region and the others reachable.

    The producer wraps under every other region's key (unless not ``wrap``);
    the consumer asks the regions in the order given.
    """
    own, others = regions[0], regions[1:]
    creds = principals.producer if role == "producer" else principals.consumer
    fields: dict[str, Any] = {
        "rabbitmq_urls": tuple(rabbitmq_urls),
        "region_id": own.name,
        "kms_endpoint": own.endpoint,
        "kms_key_id": own.key_id,
        "kms_region_endpoints": tuple((r.name, r.endpoint) for r in others),
        "access_key_id": creds.access_key_id,
        "access_key_secret": creds.access_key_secret,
    }
    if role == "producer" and wrap:
        fields["kms_wrap_also"] = tuple((r.name, r.key_id) for r in others)
    return Settings(**{**fields, **changes})
