"""docker-compose.yml and the Dockerfile, checked without a Docker engine."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from irrigation.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


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
    assert {"postgres", "redis", "migrate", "api", "worker", "simulator"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"


def test_the_service_images_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "simulator"):
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
    assert _command(services["worker"]).startswith("irrigation worker")
    assert _command(services["simulator"]).startswith("irrigation simulator")


def test_healthchecks(services: dict[str, Any]) -> None:
    assert "pg_isready" in _healthcheck(services["postgres"])
    assert "redis-cli ping" in _healthcheck(services["redis"])
    assert ":8000/healthz" in _healthcheck(services["api"])
    assert ":8081/healthz" in _healthcheck(services["simulator"])


def test_api_and_worker_wait_for_the_migrations(services: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_services_reach_each_other_by_name(services: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "simulator"):
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
