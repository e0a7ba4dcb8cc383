"""docker-compose.yml, the Dockerfile and the KMS seed, checked statically."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SEED = ROOT / "deploy" / "kms-seed.yaml"

APP_SERVICES = ("producer", "consumer")
SHARED_ENV = (
    "RABBITMQ_URL",
    "KMS_ENDPOINT",
    "ALIBABA_CLOUD_REGION_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
)


# ${NAME:-default}: images and host ports are variables (CI sets them); the file
# is checked with every variable at its default, as `docker compose up` sees it.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:-)?(?P<default>[^}]*)\}")


def with_defaults(text: str) -> str:
    return VARIABLE.sub(lambda m: m["default"], text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(with_defaults(COMPOSE.read_text(encoding="utf-8")))
    assert isinstance(loaded, dict)
    return loaded


def test_every_compose_variable_is_ours_and_has_a_default() -> None:
    found = list(VARIABLE.finditer(COMPOSE.read_text(encoding="utf-8")))
    assert found
    for match in found:
        assert match["name"].startswith("EMQ_"), match[0]
        assert match["op"] == ":-", match[0]
        assert match["default"], match[0]


def test_the_images_are_variables_with_the_official_images_as_defaults() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "${EMQ_RABBITMQ_IMAGE:-rabbitmq:" in text
    assert "${EMQ_PROMETHEUS_IMAGE:-prom/prometheus:" in text
    assert "PYTHON_IMAGE: ${EMQ_PYTHON_IMAGE:-python:3.11-slim}" in text
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M) == ["${PYTHON_IMAGE}"]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    loaded = yaml.safe_load(SEED.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(command):
            return command[i + 1]
    return None


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _principal(seed: dict[str, Any], access_key_id: str) -> dict[str, Any]:
    matches = [p for p in seed["principals"] if p["access_key_id"] == access_key_id]
    assert len(matches) == 1, f"seed has no single principal {access_key_id!r}"
    principal: dict[str, Any] = matches[0]
    return principal


def test_compose_defines_the_four_services(services: dict[str, Any]) -> None:
    assert {"rabbitmq", "kms-emulator", "producer", "consumer"} <= set(services)


def test_every_image_is_pinned_to_an_explicit_tag(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} names no image"
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_broker_is_a_pinned_3x_management_image(services: dict[str, Any]) -> None:
    image = services["rabbitmq"]["image"]
    assert re.fullmatch(r"rabbitmq:3\.\d+\.\d+-management", image), image


@pytest.mark.parametrize("name", ["rabbitmq", "kms-emulator"])
def test_infrastructure_services_have_healthchecks(
    services: dict[str, Any], name: str
) -> None:
    check = services[name].get("healthcheck", {})
    assert check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable", False)


def test_emulator_healthcheck_probes_healthz_on_its_own_port(
    services: dict[str, Any],
) -> None:
    emulator = services["kms-emulator"]
    port = _option(_command(emulator), "--port")
    probe = " ".join(emulator["healthcheck"]["test"])
    assert f":{port}/healthz" in probe


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_wait_for_healthy_broker_and_kms(
    services: dict[str, Any], name: str
) -> None:
    depends = services[name]["depends_on"]
    assert isinstance(depends, dict), "depends_on needs the long form with conditions"
    for needed in ("rabbitmq", "kms-emulator"):
        assert depends[needed]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_are_wired_by_environment(services: dict[str, Any], name: str) -> None:
    env = _environment(services[name])
    missing = [var for var in SHARED_ENV if not env.get(var)]
    assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_reach_the_compose_broker(services: dict[str, Any], name: str) -> None:
    url = urlsplit(_environment(services[name])["RABBITMQ_URL"])
    broker_env = _environment(services["rabbitmq"])
    assert url.scheme == "amqp"
    assert url.hostname == "rabbitmq"
    assert url.port in (None, 5672)
    # guest may only log in from localhost, so the broker must define the user
    assert url.username == broker_env["RABBITMQ_DEFAULT_USER"]
    assert url.password == broker_env["RABBITMQ_DEFAULT_PASS"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_reach_the_compose_emulator(
    services: dict[str, Any], name: str
) -> None:
    endpoint = _environment(services[name])["KMS_ENDPOINT"]
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    assert url.hostname == "kms-emulator"
    assert str(url.port) == _option(_command(services["kms-emulator"]), "--port")


def test_emulator_listens_beyond_loopback_and_authenticates(
    services: dict[str, Any],
) -> None:
    command = _command(services["kms-emulator"])
    assert _option(command, "--host") == "0.0.0.0"  # noqa: S104 - inside its container
    assert _option(command, "--auth") in (None, "strict")


def test_emulator_seed_is_the_mounted_deploy_file(services: dict[str, Any]) -> None:
    emulator = services["kms-emulator"]
    seed_path = _option(_command(emulator), "--seed")
    mounts = {
        target: source
        for source, target, *_ in (v.split(":") for v in emulator["volumes"])
    }
    assert seed_path in mounts
    assert (ROOT / mounts[seed_path]).resolve() == SEED.resolve()


def test_producer_and_consumer_use_different_credentials(
    services: dict[str, Any],
) -> None:
    producer = _environment(services["producer"])
    consumer = _environment(services["consumer"])
    for var in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        assert producer[var] != consumer[var]


@pytest.mark.parametrize(
    ("service", "allowed", "forbidden"),
    [
        ("producer", "GenerateDataKey", "Decrypt"),
        ("consumer", "Decrypt", "GenerateDataKey"),
    ],
)
def test_each_client_holds_only_its_own_kms_permission(
    services: dict[str, Any],
    seed: dict[str, Any],
    service: str,
    allowed: str,
    forbidden: str,
) -> None:
    env = _environment(services[service])
    principal = _principal(seed, env["ALIBABA_CLOUD_ACCESS_KEY_ID"])
    assert principal["access_key_secret"] == env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    actions = set(principal["actions"])
    assert allowed in actions
    assert forbidden not in actions
    assert "*" not in actions


def test_producer_key_id_names_a_seeded_key(
    services: dict[str, Any], seed: dict[str, Any]
) -> None:
    key_id = _environment(services["producer"])["KMS_KEY_ID"]
    known = {k.get("key_id") for k in seed["keys"]}
    known |= {alias for k in seed["keys"] for alias in k.get("aliases", [])}
    assert key_id in known


def test_seed_is_accepted_by_the_emulator() -> None:
    from envelope_mq.kms_emulator import KmsService

    service = KmsService.open(seed=SEED)
    try:
        producer = service.principal("emq-producer-dev")
        consumer = service.principal("emq-consumer-dev")
        assert producer is not None
        assert consumer is not None
        assert producer.actions == frozenset({"GenerateDataKey"})
        assert consumer.actions == frozenset({"Decrypt"})
        described = service.call(
            "DescribeKey", {"KeyId": "alias/envelope-mq-demo"}, None
        )
        assert described["KeyMetadata"]["KeyState"] == "Enabled"
    finally:
        service.close()


def test_dockerfile_builds_on_python_311_slim_and_installs_the_project() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base is not None
    assert base[1] == "python:3.11-slim"
    # with the emulator extra: the same image runs envelope-mq kms-emulator
    assert re.search(r"^RUN pip install '\.\[emulator\]'", text, flags=re.MULTILINE)
    assert re.search(r"^USER\s+(?!root)\S+", text, flags=re.MULTILINE)
    assert re.search(r'^CMD \["envelope-mq"', text, flags=re.MULTILINE)


def test_app_services_build_from_the_one_dockerfile(services: dict[str, Any]) -> None:
    images = {services[n]["image"] for n in ("kms-emulator", *APP_SERVICES)}
    assert len(images) == 1
    for name in ("kms-emulator", *APP_SERVICES):
        build = services[name].get("build")
        assert build == {
            "context": ".",
            "args": {"PYTHON_IMAGE": "python:3.11-slim"},
        }


@pytest.mark.parametrize("name", ["kms-emulator", *APP_SERVICES])
def test_service_commands_parse_with_the_real_cli(
    services: dict[str, Any], name: str
) -> None:
    from envelope_mq.shared.cli import build_parser

    command = _command(services[name])
    assert command[0] == "envelope-mq"
    args = build_parser().parse_args(command[1:])
    assert callable(getattr(args, "run", None)), f"{name}: {command} runs nothing"


# ---- issue 8: metrics, health and logs of the app services -----------------

PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"


def _metrics_port(service: dict[str, Any]) -> str:
    port = _option(_command(service), "--metrics-port")
    assert port, "the service serves no metrics (--metrics-port)"
    return port


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file or folder mounted there."""
    return {
        target: (ROOT / source).resolve()
        for source, target, *_ in (v.split(":") for v in service.get("volumes", []))
    }


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_serve_metrics_beyond_loopback(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    port = _metrics_port(service)
    assert _option(_command(service), "--metrics-host") == "0.0.0.0"  # noqa: S104
    published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
    assert port in published, f"{name} does not publish its metrics port {port}"


def test_clients_publish_metrics_on_different_host_ports(
    services: dict[str, Any],
) -> None:
    hosts = [
        str(p).rsplit(":", 2)[-2] for n in APP_SERVICES for p in services[n]["ports"]
    ]
    assert len(hosts) == len(set(hosts))


def test_every_published_port_is_bound_to_loopback_only(
    services: dict[str, Any],
) -> None:
    # The services carry development credentials (guest-like broker user, the
    # seed's AccessKeys, Grafana's admin password): never reachable from
    # another machine. "5672:5672" would publish on every interface.
    published = {
        name: [str(p) for p in service.get("ports", [])]
        for name, service in services.items()
    }
    assert any(published.values())
    for name, ports in published.items():
        for port in ports:
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), (name, port)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_client_healthchecks_probe_readiness_on_the_metrics_port(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    check = service.get("healthcheck", {})
    assert check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable", False)
    probe = " ".join(check["test"])
    assert f"http://127.0.0.1:{_metrics_port(service)}/readyz" in probe


@pytest.mark.parametrize("name", APP_SERVICES)
def test_clients_log_json_lines(services: dict[str, Any], name: str) -> None:
    assert _option(_command(services[name]), "--log-format") == "json"


def test_monitoring_services_start_only_with_their_profile(
    services: dict[str, Any],
) -> None:
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name in ("rabbitmq", "kms-emulator", *APP_SERVICES):
        assert "profiles" not in services[name]


def test_prometheus_scrapes_each_client_on_its_metrics_port(
    services: dict[str, Any],
) -> None:
    mounts = _mounts(services["prometheus"])
    config_path = _option(_command(services["prometheus"]), "--config.file")
    assert config_path is not None
    assert mounts[config_path] == PROMETHEUS_CONFIG.resolve()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {f"{n}:{_metrics_port(services[n])}" for n in APP_SERVICES}
    assert targets == expected


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING.resolve()
    dashboards = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "envelope-mq.yaml").read_text()
    )
    folder = dashboards["providers"][0]["options"]["path"]
    assert any(
        target.startswith(f"{folder}/") and source == DASHBOARD.resolve()
        for target, source in mounts.items()
    )
    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text()
    )
    url = urlsplit(datasources["datasources"][0]["url"])
    assert url.hostname == "prometheus"
    published = [str(p).rsplit(":", 1)[-1] for p in services["prometheus"]["ports"]]
    assert str(url.port) in published
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
