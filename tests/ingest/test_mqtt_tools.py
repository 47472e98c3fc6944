"""The tools for people: `irrigation mqtt-publish FILE` replays an NDJSON file over MQTT, and
`irrigation demo --mqtt` feeds the demo sensor through the broker and the bridge."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from irrigation.cli import app as cli
from irrigation.db import create_engine, create_sessionmaker
from irrigation.demo import ensure_demo
from irrigation.settings import Settings
from tests.ingest.mqtt_helpers import (
    moisture_sensor,
    mqtt_env,
    mqtt_jobs,
    reading,
    running_bridge,
    site_id,
    stored_readings,
)
from tests.pumps.conftest import (
    api_url,
    device,
    driver,
    e2e_env,
    simulator,
    simulator_url,
    spawn,
)
from tests.support.api import Headers
from tests.support.polling import wait_for

__all__ = [
    "api_url",
    "device",
    "driver",
    "e2e_env",
    "simulator",
    "simulator_url",
    "spawn",
]  # fixtures in use

runner = CliRunner()


def _use(monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path) -> None:
    """The CLI reads its settings from the environment: this test's broker and topics."""
    monkeypatch.chdir(tmp_path)  # no stray .env or stack.json
    monkeypatch.setenv("IRRIGATION_DATA_DIR", str(tmp_path))
    for name, value in mqtt_env(settings).items():
        monkeypatch.setenv(name, value)


def _stored(settings: Settings, count: int) -> Any:
    async def check() -> bool:
        return await stored_readings(settings.effective_database_url) >= count

    return check


async def test_mqtt_publish_replays_a_file_one_reading_a_message_or_in_batches(
    client: httpx.AsyncClient,
    admin: Headers,
    mqtt_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = await site_id(client, admin)
    sensor = await moisture_sensor(client, admin)
    _use(monkeypatch, mqtt_settings, tmp_path)
    lines = [
        json.dumps({"sensor_id": sensor, **reading(10 + i, seconds_ago=10 + i)}) for i in range(7)
    ]
    singles, batched = tmp_path / "singles.ndjson", tmp_path / "batched.ndjson"
    singles.write_text("\n".join([*lines[:4], '{"ts": "2026-01-01T00:00:00Z", "value": 1}']) + "\n")
    batched.write_text("\n".join(lines[4:]) + "\n")
    async with running_bridge(mqtt_settings):
        one = await asyncio.to_thread(
            runner.invoke, cli, ["mqtt-publish", str(singles), "--site", site]
        )
        assert one.exit_code == 1, one.output  # a line names no sensor
        assert "published 4 messages, 4 readings" in one.stdout
        assert "line 5 skipped: no sensor_id" in one.stderr
        many = await asyncio.to_thread(
            runner.invoke, cli, ["mqtt-publish", str(batched), "--site", site, "--batch", "2"]
        )
        assert many.exit_code == 0, many.output
        assert "published 2 messages, 3 readings" in many.stdout
        await wait_for(_stored(mqtt_settings, 7))
    jobs = (await mqtt_jobs(mqtt_settings.effective_database_url))[site]
    assert (jobs["total"], jobs["inserted"]) == (7, 7)

    bad_site = await asyncio.to_thread(
        runner.invoke, cli, ["mqtt-publish", str(singles), "--site", "farm"]
    )
    assert bad_site.exit_code == 1
    assert "--site must be the site's id" in bad_site.output


def test_mqtt_publish_says_when_the_broker_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "r.ndjson"
    file.write_text('{"sensor_id": "x", "ts": "2026-01-01T00:00:00Z", "value": 1}\n')
    site = "6f1c1a52-0d5b-4c38-9a57-5d2f3f9f0a11"
    result = runner.invoke(
        cli,
        ["mqtt-publish", str(file), "--site", site, "--url", "mqtt://127.0.0.1:9"],
        env={"IRRIGATION_MQTT_PROTOCOL": "3.1.1"},
    )
    assert result.exit_code == 1
    assert "cannot publish to mqtt://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
async def test_demo_mqtt_feeds_the_demo_sensor_through_the_broker(
    mqtt_settings: Settings,
    api_url: str,
    simulator_url: str,
    device: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    del device  # requested for its reset of the simulator
    engine = create_engine(mqtt_settings)
    try:
        async with create_sessionmaker(engine)() as session:
            demo = await ensure_demo(session, mqtt_settings, None)
    finally:
        await engine.dispose()
    _use(monkeypatch, mqtt_settings, tmp_path)
    (tmp_path / "demo_key").write_text(demo.key)
    args = ["demo", "--mqtt", "--count", "2", "--interval", "0.05", "--url", api_url]
    async with running_bridge(mqtt_settings):
        result = await asyncio.to_thread(runner.invoke, cli, [*args, "--simulator", simulator_url])
        assert result.exit_code == 0, result.output
        assert "over MQTT" in result.stderr
        assert "moisture  49.0 %" in result.stdout
        await wait_for(_stored(mqtt_settings, 2))
    jobs = await mqtt_jobs(mqtt_settings.effective_database_url)
    assert sum(j["inserted"] for j in jobs.values()) == 2
