"""docker-compose.yml and the Dockerfile, checked without a Docker engine."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from irrigation.queue import QUEUES
from irrigation.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
# The worker services and the queues each serves.
WORKERS = {"worker-pumps": "pumps", "worker-automation-bulk": "automation,bulk"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded["services"]


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _healthcheck(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def test_the_stack_has_every_service(services: dict[str, Any]) -> None:
    assert {
        "postgres",
        "redis",
        "mosquitto",
        "migrate",
        "api",
        "worker-pumps",
        "worker-automation-bulk",
        "bridge",
        "simulator",
    } <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"


def test_the_service_images_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in ("migrate", "api", *WORKERS, "bridge", "simulator"):
        build = services[name].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user, "the image must switch to a non-root user"
    assert user[-1] not in ("root", "0"), "the image must not run as root"


def test_each_service_runs_its_command(services: dict[str, Any]) -> None:
    assert _command(services["migrate"]) == "irrigation migrate"
    assert _command(services["api"]).startswith("irrigation serve")
    assert _command(services["simulator"]).startswith("irrigation simulator")
    assert "--mqtt-url mqtt://simulator:change-me@mosquitto:1883" in _command(services["simulator"])
    assert _command(services["bridge"]) == "irrigation mqtt"


def test_one_worker_serves_the_pumps_queue_and_another_the_rest(
    services: dict[str, Any],
) -> None:
    """Pump jobs never share a process (loop, database pool, job slots) with imports or
    webhooks; each worker's healthcheck asks for its own queues' workers."""
    served: list[str] = []
    for name, queues in WORKERS.items():
        assert _command(services[name]) == f"irrigation worker --queues {queues}", name
        assert _healthcheck(services[name]) == (
            f"CMD irrigation worker --queues {queues} --check"
        ), name
        served += queues.split(",")
    assert sorted(served) == sorted(QUEUES)  # every queue, once
    others = [n for n, s in services.items() if "irrigation worker" in _command(s)]
    assert sorted(others) == sorted(WORKERS)
    # Only the pumps' worker talks to the devices.
    assert "IRRIGATION_GATEWAY" not in _environment(services["worker-automation-bulk"])


def test_healthchecks(services: dict[str, Any]) -> None:
    assert "pg_isready" in _healthcheck(services["postgres"])
    assert "redis-cli ping" in _healthcheck(services["redis"])
    assert ":8000/healthz" in _healthcheck(services["api"])
    assert ":8081/healthz" in _healthcheck(services["simulator"])
    assert _healthcheck(services["bridge"]) == "CMD irrigation mqtt --check"
    assert "mosquitto_sub" in _healthcheck(services["mosquitto"])


def test_api_worker_and_bridge_wait_for_the_migrations(services: dict[str, Any]) -> None:
    for name in ("api", *WORKERS, "bridge"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_services_reach_each_other_by_name(services: dict[str, Any]) -> None:
    for name in ("migrate", "api", *WORKERS, "bridge", "simulator"):
        env = _environment(services[name])
        assert (
            env["IRRIGATION_DATABASE_URL"]
            == "postgresql://postgres:postgres@postgres:5432/irrigation"
        ), name
        assert env["IRRIGATION_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["IRRIGATION_GATEWAY_URL"] == "http://simulator:8081", name
        assert env["IRRIGATION_WEATHER_URL"] == "http://simulator:8081", name
    assert _environment(services["api"])["IRRIGATION_HOST"] == "0.0.0.0"
    assert "--host 0.0.0.0" in _command(services["simulator"])


def test_every_irrigation_variable_is_a_setting() -> None:
    """A misspelt variable would be silently ignored (extra="ignore"): catch it here."""
    names = set(re.findall(r"\bIRRIGATION_[A-Z0-9_]+", COMPOSE.read_text()))
    assert names
    fields = {f"IRRIGATION_{name.upper()}" for name in Settings.model_fields}
    assert names <= fields, f"not settings: {sorted(names - fields)}"


def test_mosquitto_runs_the_projects_configuration_and_acl(services: dict[str, Any]) -> None:
    """The broker's delivery settings and ACL are the project's files; its messages outlive
    the container."""
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["mosquitto"]["volumes"]}
    assert mounts["/mosquitto/config/mosquitto.conf"] == "./deploy/mosquitto/mosquitto.conf"
    assert mounts["/mosquitto/config/acl"] == "./deploy/mosquitto/acl"
    assert mounts["/mosquitto/config/passwd"] == "./deploy/mosquitto/passwd.example"
    assert mounts["/mosquitto/data"] == "mosquittodata"
    for host_path in ("mosquitto.conf", "acl", "passwd.example"):
        assert (ROOT / "deploy" / "mosquitto" / host_path).is_file(), host_path
    config = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    for line in ("persistence true", "max_queued_messages 0", "allow_anonymous false"):
        assert re.search(rf"^{line}$", config, re.M), line
    assert re.search(r"^acl_file /mosquitto/config/acl$", config, re.M)


def test_the_bridge_reaches_the_broker_by_name_with_its_own_credential(
    services: dict[str, Any],
) -> None:
    env = _environment(services["bridge"])
    assert env["IRRIGATION_MQTT_URL"] == "mqtt://bridge:change-me@mosquitto:1883"
    assert env["IRRIGATION_MQTT_INSTANCE"]  # a stable client id: its session outlives restarts
    depends = services["bridge"]["depends_on"]
    assert depends["mosquitto"]["condition"] == "service_healthy"
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert "user bridge" in acl
    assert re.search(r"^bridge:\$7\$", (ROOT / "deploy/mosquitto/passwd.example").read_text(), re.M)


def test_the_pumps_are_driven_over_mqtt_each_side_with_its_own_credential(
    services: dict[str, Any],
) -> None:
    """The worker commands the devices as `gateway`, the simulator plays them as
    `simulator`; both credentials are in the example password file and the ACL, and both
    services wait for the broker."""
    worker = _environment(services["worker-pumps"])
    assert worker["IRRIGATION_GATEWAY"] == "mqtt"
    assert worker["IRRIGATION_MQTT_URL"] == "mqtt://gateway:change-me@mosquitto:1883"
    assert worker["IRRIGATION_GATEWAY_URL"] == "http://simulator:8081"  # the HTTP driver's
    for name in ("worker-pumps", "simulator"):
        assert services[name]["depends_on"]["mosquitto"]["condition"] == "service_healthy", name
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    passwd = (ROOT / "deploy/mosquitto/passwd.example").read_text()
    for user in ("gateway", "simulator"):
        assert re.search(rf"^user {user}$", acl, re.M), user
        assert re.search(rf"^{user}:\$7\$", passwd, re.M), user
