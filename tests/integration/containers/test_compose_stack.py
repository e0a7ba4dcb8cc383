"""docker-compose.yml end to end: built, brought up, checked, taken down.

The images come from the EMQ_* variables (scripts/containers.sh sets them to images
built from Debian's packages; unset, the official images), every host port is a free
one (never the machine's 5672). The stack comes up in the order its depends_on
conditions say — broker and emulator healthy first — with the test running the
healthchecks where the engine cannot (podman without systemd). Grafana does not run
here (it has no Debian package and its image lives on Docker Hub): its part of the
monitoring profile is checked structurally by tests/unit/test_compose.py.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from container_kit import (
    COMPOSE_FILE,
    ComposeProject,
    compose_command,
    compose_project,
    missing,
)
from envelope_mq.producer.cli import generated
from envelope_mq.shared.config import Settings
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.kms import AliyunKms
from prometheus_client.parser import text_string_to_metric_families

from envelope_mq.testing.probe import free_port

pytestmark = [pytest.mark.container, pytest.mark.integration, pytest.mark.slow]

# What the compose file's producer publishes: --count=1000 --size=1024.
COUNT, SIZE = 1000, 1024
PORTS = (
    "EMQ_AMQP_PORT",
    "EMQ_RABBITMQ_UI_PORT",
    "EMQ_KMS_PORT",
    "EMQ_PRODUCER_METRICS_PORT",
    "EMQ_CONSUMER_METRICS_PORT",
    "EMQ_PROMETHEUS_PORT",
)
PATIENCE = 300.0


def wait_for(condition: Any, what: str, timeout: float = PATIENCE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(1)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http to loopback)
        return bytes(response.read()).decode("utf-8")


def counter(metrics_text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    )


def service_env(service: str) -> dict[str, str]:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    env = services[service]["environment"]
    return {str(k): str(v) for k, v in env.items()}


def decrypted_bodies(project: ComposeProject) -> set[str]:
    """The bodies of the JSON lines the consumer wrote (its stdout)."""
    bodies = set()
    for line in project.logs("consumer", stderr=False).splitlines():
        with_body = line.startswith("{") and '"body"' in line
        if with_body:
            bodies.add(json.loads(line)["body"])
    return bodies


@pytest.fixture
def project(container_engine: None, tmp_path: Path) -> Iterator[ComposeProject]:
    found = compose_command(os.environ)
    if isinstance(found, str):
        missing(found)
    command, engine = found
    environ = dict(os.environ)
    taken: set[int] = set()
    for name in PORTS:  # free host ports: never the machine's broker on 5672
        port = free_port(exclude=frozenset(taken))
        taken.add(port)
        environ[name] = str(port)
    with compose_project(command, engine, environ, tmp_path) as running:
        yield running


def test_the_compose_stack_runs_end_to_end(project: ComposeProject) -> None:
    env = project.environ
    project.run("build", timeout=900)
    project.run("up", "-d", "--no-deps", "rabbitmq", "kms-emulator")
    project.wait_healthy(["rabbitmq", "kms-emulator"])
    project.run("up", "-d", "--no-deps", "consumer", "producer")
    project.wait_healthy(["consumer", "producer"])

    # The consumer printed every message the producer sealed, decrypted.
    expected = {body.decode() for body in generated(COUNT, SIZE)}
    wait_for(lambda: decrypted_bodies(project) >= expected, "the decrypted messages")
    assert decrypted_bodies(project) == expected

    # Least privilege in the stack's emulator: the producer's principal may wrap a
    # data key but not unwrap it; the consumer's may.
    kms_endpoint = f"http://127.0.0.1:{env['EMQ_KMS_PORT']}"

    def principal(service: str) -> AliyunKms:
        settings = service_env(service)
        return AliyunKms.from_settings(
            Settings(
                kms_endpoint=kms_endpoint,
                region_id=settings["ALIBABA_CLOUD_REGION_ID"],
                access_key_id=settings["ALIBABA_CLOUD_ACCESS_KEY_ID"],
                access_key_secret=settings["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
            )
        )

    key_id = service_env("producer")["KMS_KEY_ID"]
    with principal("producer") as producer_kms, principal("consumer") as consumer_kms:
        data_key = producer_kms.generate_data_key(key_id, {})
        with pytest.raises(KmsRequestError) as refused:
            producer_kms.decrypt_data_key(data_key.wrapped, {})
        unwrapped = consumer_kms.decrypt_data_key(data_key.wrapped, {})
        assert unwrapped.plaintext == data_key.plaintext
    assert "Forbidden" in refused.value.code

    # Both services' /metrics, scraped from the host through the published ports.
    producer_metrics = fetch(
        f"http://127.0.0.1:{env['EMQ_PRODUCER_METRICS_PORT']}/metrics"
    )
    assert counter(producer_metrics, "envelope_mq_messages_confirmed_total") == COUNT
    consumer_metrics = fetch(
        f"http://127.0.0.1:{env['EMQ_CONSUMER_METRICS_PORT']}/metrics"
    )
    assert counter(consumer_metrics, "envelope_mq_messages_handled_total") == COUNT

    # The monitoring profile's Prometheus (Grafana cannot run here) scrapes both.
    project.run("--profile", "monitoring", "up", "-d", "--no-deps", "prometheus")
    project.wait_healthy(["prometheus"])
    query = (
        f"http://127.0.0.1:{env['EMQ_PROMETHEUS_PORT']}/api/v1/query?query="
        "sum(envelope_mq_messages_confirmed_total)%2Bsum(envelope_mq_messages_handled_total)"
    )

    def scraped_both() -> bool:
        result = json.loads(fetch(query))["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) == 2 * COUNT

    wait_for(scraped_both, "Prometheus to scrape the producer and the consumer")
