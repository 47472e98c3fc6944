"""End to end, judged from the simulator's truth: a real API and a real worker, whose
forecasts come from the simulator's Open-Meteo. Frost postpones a dry zone's run (nothing
starts on the device), then the forecast warms and the pump runs."""

import asyncio
from typing import Any

import httpx
import pytest

from tests.automation.conftest import post_moisture
from tests.support.polling import wait_for
from tests.support.processes import StartProcess
from tests.support.simulator import runs

# Real API and worker processes: left out of `make test-quick`.
pytestmark = pytest.mark.slow


async def frost_zone(api: httpx.AsyncClient) -> dict[str, Any]:
    zone = await api.post(
        "/v1/zones",
        json={
            "name": "orchard",
            "timezone": "UTC",
            "latitude": 45.72,
            "longitude": 4.83,
            "min_temp_c": 1.0,
        },
    )
    assert zone.status_code == 201, zone.text
    zone_id = zone.json()["id"]
    pump = await api.post(
        "/v1/pumps",
        json={
            "zone_id": zone_id,
            "name": "orchard",
            "hardware_id": "hw-orchard",
            "cooldown_s": 1,
            "max_runtime_s": 3,
        },
    )
    assert pump.status_code == 201, pump.text
    sensor = await api.post(
        "/v1/sensors",
        json={"zone_id": zone_id, "name": "orchard", "kind": "soil_moisture", "unit": "%"},
    )
    assert sensor.status_code == 201, sensor.text
    rule = await api.post(
        "/v1/threshold-rules",
        json={
            "zone_id": zone_id,
            "start_below": 30,
            "stop_above": 45,
            "window_s": 60,
            "duration_s": 2,
        },
    )
    assert rule.status_code == 201, rule.text
    return {"zone": zone.json(), "pump": pump.json(), "sensor": sensor.json()}


async def test_frost_postpones_a_run_then_it_runs_when_the_forecast_warms(
    api: httpx.AsyncClient,
    admin: dict[str, str],
    spawn: StartProcess,
    device: httpx.AsyncClient,
    simulator_url: str,
) -> None:
    (await device.put("/weather", json={"temperature_c": -4.0})).raise_for_status()
    # The simulator's forecast, reused for a second only: the warming is seen at once.
    spawn("worker", IRRIGATION_WEATHER_URL=simulator_url, IRRIGATION_WEATHER_CACHE_S="1")
    orchard = await frost_zone(api)
    zone_id, site_id = orchard["zone"]["id"], orchard["zone"]["site_id"]
    hardware_id = orchard["pump"]["hardware_id"]

    async def reasons() -> list[str]:
        decided = (await api.get(f"/v1/zones/{zone_id}/decisions")).json()["items"]
        return [d["reason"] for d in reversed(decided)]

    async def ran() -> list[dict[str, Any]]:
        return await runs(device, hardware_id, site_id)

    async def frozen() -> bool:
        return await reasons() == ["freeze"]

    await post_moisture(api, admin, orchard["sensor"]["id"], [12, 11, 10])
    await wait_for(frozen, timeout_s=15)
    # Held through several dispatcher passes (one a second): the device never started.
    await asyncio.sleep(3)
    assert await ran() == []
    assert await reasons() == ["freeze"]
    (waiting,) = (await api.get("/v1/run-queue")).json()["items"]
    assert (waiting["status"], waiting["last_reason"]) == ("waiting", "freeze")

    (await device.put("/weather", json={"temperature_c": 6.0})).raise_for_status()
    (run,) = await wait_for(ran, timeout_s=15)
    assert run["started_at"]
    assert await reasons() == ["freeze", "started"]
    started = (await api.get(f"/v1/zones/{zone_id}/decisions")).json()["items"][0]
    assert started["detail"]["lockouts"]["temperature_c"] == 6.0
