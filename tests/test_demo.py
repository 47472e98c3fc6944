"""The demo site `up` prepares, and the feeder (`irrigation demo`) that keeps its sensor
talking: against the real API (in-process, and once as a process for the CLI) and the
real device simulator."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from irrigation.auth import service as auth
from irrigation.cli import app as cli
from irrigation.db import create_engine, create_sessionmaker
from irrigation.demo import (
    DEMO_HARDWARE_ID,
    DEMO_LATITUDE,
    DEMO_LONGITUDE,
    DemoSite,
    Feeder,
    FeederError,
    find_sensor,
    run_feeder,
)
from irrigation.demo import ensure_demo as _ensure_demo
from irrigation.demo_soil import DRY_PER_READING, START_PCT, WET_PER_RUN
from irrigation.fleet import service as fleet
from irrigation.fleet.schemas import ZoneCreate
from irrigation.settings import Settings
from tests.pumps.conftest import (
    api_url,
    device,
    driver,
    e2e_env,
    simulator,
    simulator_url,
    spawn,
)
from tests.support.api import bearer
from tests.support.processes import free_port
from tests.support.simulator import start_run

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


async def ensure_demo(settings: Settings, saved_key: str | None = None) -> DemoSite:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            return await _ensure_demo(session, settings, saved_key)
    finally:
        await engine.dispose()


@pytest.fixture
async def demo_site(settings: Settings) -> DemoSite:
    return await ensure_demo(settings)


@pytest.fixture
async def api(client: httpx.AsyncClient, demo_site: DemoSite) -> httpx.AsyncClient:
    """The in-process API, as the demo site's admin."""
    client.headers.update(bearer(demo_site.key))
    return client


async def _get(api: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_demo_site_has_weather_a_rule_and_a_schedule(
    settings: Settings, api: httpx.AsyncClient, demo_site: DemoSite
) -> None:
    zone = await _get(api, f"/v1/zones/{demo_site.zone_id}")
    assert (zone["name"], zone["timezone"]) == ("Demo field", "Europe/Berlin")
    assert (zone["latitude"], zone["longitude"]) == (DEMO_LATITUDE, DEMO_LONGITUDE)
    rules = (await _get(api, "/v1/threshold-rules"))["items"]
    assert [
        (r["zone_id"], r["start_below"], r["stop_above"], r["duration_s"], r["window_s"])
        for r in rules
    ] == [(str(demo_site.zone_id), 30, 40, 20, 60)]
    schedules = (await _get(api, "/v1/schedules"))["items"]
    assert [
        (s["zone_id"], s["cron"], s["duration_s"], s["skip_if_moisture_above"]) for s in schedules
    ] == [(str(demo_site.zone_id), "*/10 * * * *", 15, 60)]
    assert schedules[0]["next_run_at"] is not None

    again = await ensure_demo(settings, demo_site.key)  # a second `up`: nothing new
    assert again == demo_site
    assert len((await _get(api, "/v1/threshold-rules"))["items"]) == 1
    assert len((await _get(api, "/v1/schedules"))["items"]) == 1
    assert len((await _get(api, "/v1/pumps"))["items"]) == 1


async def test_an_older_demo_site_gains_a_place_a_rule_and_a_schedule(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            async with session.begin():
                site = await auth.get_or_create_site(session, "demo", create=True)
                site_id = site.id
            zone = ZoneCreate(name="Demo field", timezone="Europe/Berlin")
            zone_id = (await fleet.create_zone(session, site_id, zone)).id
    finally:
        await engine.dispose()
    demo_site = await ensure_demo(settings)
    assert demo_site.zone_id == zone_id
    client.headers.update(bearer(demo_site.key))
    zone_out = await _get(client, f"/v1/zones/{zone_id}")
    assert (zone_out["latitude"], zone_out["longitude"]) == (DEMO_LATITUDE, DEMO_LONGITUDE)
    assert zone_out["version"] == 2
    assert len((await _get(client, "/v1/threshold-rules"))["items"]) == 1
    assert len((await _get(client, "/v1/schedules"))["items"]) == 1


async def test_the_feeder_dries_the_soil_and_a_pump_run_wets_it(
    api: httpx.AsyncClient, device: httpx.AsyncClient
) -> None:
    sensor_id, site_id, hardware_ids = await find_sensor(api)
    assert hardware_ids == [DEMO_HARDWARE_ID]
    demo_pump = (str(site_id), DEMO_HARDWARE_ID)
    # A run from before the feeder started does not count.
    await start_run(device, *demo_pump, "before", 0.05)
    feeder = Feeder(api, device, sensor_id, site_id, hardware_ids)
    lines: list[str] = []

    await run_feeder(feeder, interval_s=0.01, count=3, echo=lines.append)
    latest = await _get(api, f"/v1/sensors/{sensor_id}/latest")
    assert [r["value"] for r in latest["recent"]] == [48, 49, 50]  # newest first
    assert len(lines) == 3
    assert "moisture  48.0 %" in lines[-1]
    assert not any("watered" in line or "[" in line for line in lines), lines

    # Another site's device with the same hardware id is not this zone's pump.
    await start_run(device, "another-site", DEMO_HARDWARE_ID, "elsewhere", 0.1)
    await start_run(device, *demo_pump, "demo-run-1", 0.1, sequence=2)
    await run_feeder(feeder, interval_s=0.01, count=2, echo=lines.append)
    latest = await _get(api, f"/v1/sensors/{sensor_id}/latest")
    assert [r["value"] for r in latest["recent"]][:3] == [72, 73, 48]  # +25, then dries on
    assert "watered" in lines[3]
    assert "watered" not in lines[4]


async def test_the_feeder_goes_on_without_the_simulator(api: httpx.AsyncClient) -> None:
    sensor_id, site_id, hardware_ids = await find_sensor(api)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}") as gone:
        feeder = Feeder(api, gone, sensor_id, site_id, hardware_ids)
        lines: list[str] = []
        await run_feeder(feeder, interval_s=0.01, count=2, echo=lines.append, quiet=True)
    assert len(lines) == 2
    assert all("simulator: ConnectError" in line for line in lines)
    latest = await _get(api, f"/v1/sensors/{sensor_id}/latest")
    assert latest["value"] == 49


async def test_a_wrong_key_is_one_clear_error(
    client: httpx.AsyncClient, demo_site: DemoSite
) -> None:
    del demo_site
    client.headers.update(bearer("irr_not-a-key"))
    with pytest.raises(FeederError, match="refused the key"):
        await find_sensor(client)


@pytest.mark.slow
async def test_the_cli_feeds_a_real_api(
    settings: Settings,
    api_url: str,
    simulator_url: str,
    device: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    del device  # requested for its reset of the simulator
    site = await ensure_demo(settings)
    monkeypatch.chdir(tmp_path)  # no stray .env or stack.json
    monkeypatch.setenv("IRRIGATION_DATA_DIR", str(tmp_path))
    (tmp_path / "demo_key").write_text(site.key)
    args = ["demo", "--count", "2", "--interval", "0.05", "--url", api_url]
    # In a thread: the simulator is served by this test's event loop.
    result = await asyncio.to_thread(runner.invoke, cli, [*args, "--simulator", simulator_url])
    assert result.exit_code == 0, result.output
    assert "moisture  50.0 %" in result.stdout
    assert "moisture  49.0 %" in result.stdout

    wrong = await asyncio.to_thread(runner.invoke, cli, [*args, "--key", "irr_wrong"])
    assert wrong.exit_code == 1
    assert "refused the key (401)" in wrong.output
    assert "Traceback" not in wrong.output


def test_the_cli_says_when_the_api_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IRRIGATION_DATA_DIR", str(tmp_path))
    url = f"http://127.0.0.1:{free_port()}"
    no_key = runner.invoke(cli, ["demo", "--count", "1", "--url", url])
    assert no_key.exit_code == 1
    assert "no key in" in no_key.output

    result = runner.invoke(cli, ["demo", "--count", "1", "--url", url, "--key", "irr_x"])
    assert result.exit_code == 1
    assert f"cannot reach the API at {url}" in result.output
    assert "Traceback" not in result.output


def test_the_help_states_the_feeders_own_numbers() -> None:
    # Folded by the terminal width, so compare words, not lines.
    words = " ".join(CliRunner().invoke(cli, ["demo", "--help"], terminal_width=200).output.split())
    assert f"wetted by {WET_PER_RUN:g} points" in words
    assert f"starting at {START_PCT:g} %" in words
    assert f"drying by {DRY_PER_READING:g} point" in words
