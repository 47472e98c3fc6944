"""The `irrigation` command's surface, and how `up` shares its URLs with other commands."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from irrigation.cli import STACK_FILE, app, load_settings

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for command in (
        "serve",
        "worker",
        "migrate",
        "keys",
        "openapi",
        "up",
        "simulator",
        "demo",
        "mqtt",
        "mqtt-publish",
    ):
        assert command in result.output


def test_keys_has_create_list_revoke() -> None:
    result = runner.invoke(app, ["keys", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for command in ("create", "list", "revoke"):
        assert command in result.output


def test_up_takes_both_ports() -> None:
    result = runner.invoke(app, ["up", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--port" in result.output
    assert "--simulator-port" in result.output
    assert "--no-demo" in result.output


def test_up_refuses_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} is already in use" in result.output
    assert not (tmp_path / ".data" / STACK_FILE).exists()


def test_openapi_prints_yaml() -> None:
    result = runner.invoke(app, ["openapi"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("openapi:")
    assert "paths" in yaml.safe_load(result.output)


def test_commands_beside_a_running_up_use_its_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("IRRIGATION_DATABASE_URL", raising=False)
    monkeypatch.delenv("IRRIGATION_REDIS_URL", raising=False)
    monkeypatch.delenv("IRRIGATION_MQTT_URL", raising=False)
    monkeypatch.setenv("IRRIGATION_DATA_DIR", str(tmp_path))
    saved = {
        "pid": os.getpid(),  # a live process: this `up` is running
        "database_url": "postgresql+asyncpg://postgres:@/irrigation?host=/tmp/pg",
        "redis_url": "unix:///tmp/redis.socket",
        "mqtt_url": "mqtt://127.0.0.1:18830",
        "mqtt_protocol": "3.1.1",
        "embedded": {},
    }
    (tmp_path / STACK_FILE).write_text(json.dumps(saved))
    settings = load_settings()
    assert settings.database_url == saved["database_url"]
    assert settings.redis_url == saved["redis_url"]
    assert (settings.mqtt_url, settings.mqtt_protocol) == ("mqtt://127.0.0.1:18830", "3.1.1")

    monkeypatch.setenv("IRRIGATION_REDIS_URL", "redis://elsewhere:6379/0")
    assert load_settings().redis_url == "redis://elsewhere:6379/0"  # the environment wins


def test_a_stack_file_left_by_a_dead_up_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IRRIGATION_DATABASE_URL", raising=False)
    monkeypatch.delenv("IRRIGATION_REDIS_URL", raising=False)
    monkeypatch.setenv("IRRIGATION_DATA_DIR", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    saved = {"pid": int(dead.stdout), "database_url": "postgresql://x@/y?host=/gone"}
    (tmp_path / STACK_FILE).write_text(json.dumps(saved))
    assert load_settings().database_url is None
