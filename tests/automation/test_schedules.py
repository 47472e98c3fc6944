"""Schedules fire at their local times across DST, once, and skip for the right reasons."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from irrigation.automation.et import compute_water_level
from irrigation.common import clock
from irrigation.weather import DailyWeather
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.support.factories import make_pump


def travel_to(moment: datetime) -> None:
    clock.move(moment - clock.utcnow())


async def zone_and_pump(
    client: httpx.AsyncClient, admin: dict[str, str], tz: str, **zone: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = {"name": "Beds", "timezone": tz, **zone}
    created = await client.post("/v1/zones", json=body, headers=admin)
    assert created.status_code == 201, created.text
    pump = await make_pump(client, admin, "hw-beds", zone_id=created.json()["id"])
    return created.json(), pump


async def make_schedule(
    client: httpx.AsyncClient, admin: dict[str, str], zone_id: str, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v1/schedules", json={"zone_id": zone_id, "duration_s": 10, **extra}, headers=admin
    )
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def walk(engine: Engine, start: datetime, end: datetime, step: timedelta) -> None:
    """The clock walks through the night; the schedule cron runs at every step."""
    moment = start
    while moment <= end:
        travel_to(moment)
        await engine.fire()
        moment += step


async def test_spring_forward_0230_runs_once_an_hour_later_on_the_wall(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    travel_to(datetime(2026, 3, 28, 22, 0, tzinfo=UTC))
    zone, _ = await zone_and_pump(client, admin, "Europe/Berlin")
    schedule = await make_schedule(client, admin, zone["id"], start_times=["02:30"])
    assert schedule["next_run_at"] == "2026-03-29T01:30:00Z"
    await walk(engine, clock.utcnow(), datetime(2026, 3, 29, 4, tzinfo=UTC), timedelta(minutes=7))
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert asked[0]["priority"] == "scheduled"
    assert "2026-03-29 03:30 Europe/Berlin" in asked[0]["reason"]
    shown = (await client.get(f"/v1/schedules/{schedule['id']}", headers=admin)).json()
    assert shown["next_run_at"] == "2026-03-30T00:30:00Z"
    assert shown["last_run_at"] == "2026-03-29T01:30:00Z"


async def test_fall_back_0230_runs_once_not_twice(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    travel_to(datetime(2026, 10, 24, 21, 0, tzinfo=UTC))
    zone, _ = await zone_and_pump(client, admin, "Europe/Berlin")
    await make_schedule(client, admin, zone["id"], cron="30 2 * * *")
    await walk(engine, clock.utcnow(), datetime(2026, 10, 25, 4, tzinfo=UTC), timedelta(minutes=6))
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert "2026-10-25 02:30 Europe/Berlin" in asked[0]["reason"]
    # Nothing but the one start was decided: no second run, no skip.
    assert [d["outcome"] for d in await decisions(client, admin, zone["id"])] == ["started"]


async def test_new_york_fall_back_0130_runs_once_and_spring_0230_runs_at_0330(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    travel_to(datetime(2026, 11, 1, 3, 0, tzinfo=UTC))
    zone, pump = await zone_and_pump(client, admin, "America/New_York")
    await make_schedule(client, admin, zone["id"], start_times=["01:30"])
    await walk(engine, clock.utcnow(), datetime(2026, 11, 1, 8, tzinfo=UTC), timedelta(minutes=8))
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert "2026-11-01 01:30 America/New_York" in asked[0]["reason"]

    zone2 = (
        await client.post(
            "/v1/zones", json={"name": "Spring", "timezone": "America/New_York"}, headers=admin
        )
    ).json()
    await make_pump(client, admin, "hw-spring", zone_id=zone2["id"])
    travel_to(datetime(2026, 3, 8, 5, 0, tzinfo=UTC))
    spring = await make_schedule(client, admin, zone2["id"], start_times=["02:30"])
    assert spring["next_run_at"] == "2026-03-08T07:30:00Z"
    await walk(engine, clock.utcnow(), datetime(2026, 3, 8, 9, tzinfo=UTC), timedelta(minutes=9))
    asked = await run_requests(client, admin, zone_id=zone2["id"])
    assert len(asked) == 1
    assert "2026-03-08 03:30 America/New_York" in asked[0]["reason"]
    del pump


async def fire_once(engine: Engine) -> None:
    clock.move(timedelta(seconds=61))
    await engine.fire()


async def test_skip_conditions_each_write_their_decision(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, _ = await zone_and_pump(client, admin, "Europe/Berlin", latitude=52.52, longitude=13.40)
    sensor = (
        await client.post(
            "/v1/sensors",
            json={"zone_id": zone["id"], "name": "m", "kind": "soil_moisture", "unit": "%"},
            headers=admin,
        )
    ).json()
    schedule = await make_schedule(
        client,
        admin,
        zone["id"],
        cron="* * * * *",
        skip_if_moisture_above=40,
        skip_if_rain_forecast_mm=5,
    )
    until = (clock.utcnow() + timedelta(hours=1)).isoformat()
    await client.post("/v1/sites/current/rain-delay", json={"until": until}, headers=admin)
    await fire_once(engine)
    await client.delete("/v1/sites/current/rain-delay", headers=admin)

    await post_moisture(client, admin, sensor["id"], [55, 56], end=clock.utcnow())
    await fire_once(engine)
    await post_moisture(client, admin, sensor["id"], [20, 20, 20], end=clock.utcnow())
    clock.move(timedelta(minutes=16))  # the wet readings leave the 15-minute window

    engine.weather.set(rain_next_24h_mm=12)
    await fire_once(engine)
    engine.weather.set(rain_next_24h_mm=0)
    engine.weather.fail = True
    await fire_once(engine)  # no weather: run anyway, and say so

    skipped = await decisions(client, admin, zone["id"], outcome="skipped")
    reasons = [d["reason"] for d in reversed(skipped)]
    assert reasons == ["rain_delay", "soil_wet", "forecast_rain"]
    by_reason = {d["reason"]: d for d in skipped}
    assert by_reason["soil_wet"]["message"] == "skipped: soil moisture 55.5 is above 40"
    assert (
        "mm of rain forecast in the next 24 h (limit 5 mm)" in by_reason["forecast_rain"]["message"]
    )
    assert all(d["schedule_id"] == schedule["id"] for d in skipped)
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert asked[0]["schedule_id"] == schedule["id"]


async def test_et_scaling_scales_the_duration_and_shows_the_water_level(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    travel_to(datetime(2026, 7, 15, 9, 0, tzinfo=UTC))  # a long, hot day: more than 100 %
    zone, _ = await zone_and_pump(
        client,
        admin,
        "UTC",
        latitude=52.52,
        longitude=13.40,
        et_scaling=True,
        et_baseline_mm=3.0,
    )
    engine.weather.set(t_min_c=14, t_max_c=30)
    await make_schedule(client, admin, zone["id"], cron="* * * * *", duration_s=10)
    await fire_once(engine)
    today = clock.utcnow().date()
    level = compute_water_level(DailyWeather(today, 14, 30, 0), 52.52, 3.0, 0, 200)
    assert 100 < level.pct <= 200
    shown = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert shown["water_level_pct"] == level.pct
    asked = await run_requests(client, admin)
    assert len(asked) == 1
    assert asked[0]["duration_s"] == round(10 * level.pct / 100)
    assert f"water level {level.pct} %" in asked[0]["reason"]


async def test_a_zone_wide_schedule_runs_its_pumps_one_after_another(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, first = await zone_and_pump(client, admin, "UTC")
    # Another water source: only the chain, not capacity, keeps the second pump waiting.
    source = (await client.post("/v1/water-sources", json={"name": "spare"}, headers=admin)).json()
    second = await make_pump(
        client, admin, "hw-zz", zone_id=zone["id"], water_source_id=source["id"]
    )
    await make_schedule(client, admin, zone["id"], cron="* * * * *")
    await fire_once(engine)
    asked = {r["pump_id"]: r for r in await run_requests(client, admin)}
    assert asked[first["id"]]["status"] == "started"
    assert asked[second["id"]]["status"] == "waiting"
    assert asked[second["id"]]["after_id"] == asked[first["id"]]["id"]
    assert asked[second["id"]]["last_reason"] == "after_previous"
    assert await engine.dispatch() == 0
    stopped = await client.post(f"/v1/pumps/{first['id']}/stop", headers=admin)
    assert stopped.status_code == 200
    assert await engine.dispatch() == 1
    assert (await client.get(f"/v1/run-queue/{asked[second['id']]['id']}", headers=admin)).json()[
        "status"
    ] == "started"


async def test_workers_firing_the_same_schedule_at_once_ask_for_one_run(
    client: httpx.AsyncClient, admin: dict[str, str], engine: Engine
) -> None:
    zone, _ = await zone_and_pump(client, admin, "UTC")
    await make_schedule(client, admin, zone["id"], cron="* * * * *")
    clock.move(timedelta(seconds=61))
    fired = await asyncio.gather(*(engine.fire() for _ in range(6)))
    assert sum(fired) == 1
    assert len(await run_requests(client, admin)) == 1
