"""Stale data never drives watering: a threshold rule with too few or too old readings does
nothing and says so once per change; a schedule's moisture skip ignores readings older than
its own limit, runs as if no moisture were known, and says so."""

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from irrigation.automation.thresholds import Window, stale_because
from irrigation.automation.triggers import zone_average
from irrigation.automation.wording import seconds_words
from irrigation.common import clock
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.automation.test_schedules import fire_once, make_schedule, zone_and_pump
from tests.automation.test_thresholds import make_rule, now, zone_with_pump_and_sensor
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone
from tests.support.problems import assert_invalid, assert_problem


async def rule_of(client: httpx.AsyncClient, admin: Headers, rule_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/threshold-rules/{rule_id}", headers=admin)
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


# Threshold rules -------------------------------------------------------------------------


async def test_a_rule_whose_newest_reading_is_too_old_does_not_water_and_says_so_once(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    rule = await make_rule(client, admin, zone["id"], window_s=600, max_age_s=60)
    # Dry, and enough of them, but the newest is 90 s old.
    await post_moisture(
        client, admin, sensor["id"], [10, 10, 10], end=now() - timedelta(seconds=90)
    )
    for _ in range(4):
        assert await engine.evaluate() == 0
        clock.move(timedelta(seconds=20))
    assert await run_requests(client, admin) == []
    (stale,) = await decisions(client, admin, zone["id"], reason="stale_sensor")
    assert (stale["outcome"], stale["rule_id"]) == ("skipped", rule["id"])
    assert re.fullmatch(
        r"skipped: stale sensor data: the newest soil moisture reading is 1 min 3\d s old "
        r"\(limit 1 min\)",
        stale["message"],
    ), stale["message"]
    detail = stale["detail"]
    assert (detail["readings"], detail["min_readings"], detail["max_age_s"]) == (3, 1, 60)
    assert 90 < detail["newest_age_s"] < 100
    assert (await rule_of(client, admin, rule["id"]))["last_value"] == 10

    # Fresh again: it waters, and says nothing more about stale data.
    await post_moisture(client, admin, sensor["id"], [10], end=now())
    assert await engine.evaluate() == 1
    assert [r["status"] for r in await run_requests(client, admin)] == ["started"]
    assert len(await decisions(client, admin, zone["id"], reason="stale_sensor")) == 1

    # Stale once more (the sensor fell silent): a change, so one more decision, and one only.
    clock.move(timedelta(seconds=61))
    for _ in range(3):
        assert await engine.evaluate() == 0
        clock.move(timedelta(seconds=10))
    reasons = [d["reason"] for d in await decisions(client, admin, zone["id"])]
    assert reasons == ["stale_sensor", "started", "stale_sensor"]


async def test_too_few_readings_in_the_window_neither_trigger_nor_re_arm_a_rule(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    rule = await make_rule(client, admin, zone["id"], window_s=60, min_readings=3)
    await post_moisture(client, admin, sensor["id"], [10, 10], end=now())
    for _ in range(3):
        assert await engine.evaluate() == 0
    assert await run_requests(client, admin) == []
    (stale,) = await decisions(client, admin, zone["id"], reason="stale_sensor")
    assert stale["message"] == (
        "skipped: stale sensor data: 2 soil moisture readings in the last 1 min, fewer than 3"
    )

    await post_moisture(client, admin, sensor["id"], [10], end=now() + timedelta(seconds=1))
    clock.move(timedelta(seconds=1))
    assert await engine.evaluate() == 1
    assert not (await rule_of(client, admin, rule["id"]))["armed"]

    # One wet reading is not enough to re-arm it either.
    clock.move(timedelta(seconds=70))  # the dry readings leave the window
    await post_moisture(client, admin, sensor["id"], [60], end=now())
    assert await engine.evaluate() == 0
    assert not (await rule_of(client, admin, rule["id"]))["armed"]
    await post_moisture(client, admin, sensor["id"], [60, 60], end=now() + timedelta(seconds=2))
    clock.move(timedelta(seconds=2))
    assert await engine.evaluate() == 0
    assert (await rule_of(client, admin, rule["id"]))["armed"]
    reasons = [d["reason"] for d in await decisions(client, admin, zone["id"])]
    assert reasons == ["stale_sensor", "started", "stale_sensor"]


async def test_each_stale_spell_is_logged_once_even_when_the_fresh_data_asked_for_nothing(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    await make_rule(client, admin, zone["id"], window_s=600, max_age_s=60)
    for spell in range(3):
        await post_moisture(client, admin, sensor["id"], [40], end=now())  # moist: no water
        assert await engine.evaluate() == 0
        clock.move(timedelta(seconds=61))
        for _ in range(2):
            assert await engine.evaluate() == 0
        stale = await decisions(client, admin, zone["id"], reason="stale_sensor")
        assert len(stale) == spell + 1
    assert await decisions(client, admin, zone["id"], reason="stale_sensor") == await decisions(
        client, admin, zone["id"]
    )


async def test_a_rule_with_no_reading_at_all_says_so_once(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, _ = await zone_with_pump_and_sensor(client, admin)
    await make_rule(client, admin, zone["id"], window_s=120)
    for _ in range(3):
        assert await engine.evaluate() == 0
    (stale,) = await decisions(client, admin, zone["id"])
    assert stale["reason"] == "stale_sensor"
    assert (
        stale["message"] == "skipped: stale sensor data: no soil moisture reading in the last 2 min"
    )
    assert stale["detail"]["newest_age_s"] is None


async def test_evaluators_at_once_log_a_stale_sensor_once(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await zone_with_pump_and_sensor(client, admin)
    await make_rule(client, admin, zone["id"], window_s=600, max_age_s=30)
    await post_moisture(client, admin, sensor["id"], [10, 10], end=now() - timedelta(seconds=60))
    for _ in range(3):  # each round: several workers evaluating the same rule at once
        await asyncio.gather(*(engine.evaluate() for _ in range(6)))
    assert len(await decisions(client, admin, zone["id"], reason="stale_sensor")) == 1
    assert await run_requests(client, admin) == []


_AT = datetime(2026, 6, 1, 12, tzinfo=UTC)
_TICK = timedelta(microseconds=1)  # what PostgreSQL's timestamps resolve


@pytest.mark.parametrize(
    ("count", "newest", "is_stale"),
    [
        (3, _AT - timedelta(seconds=60), False),  # exactly max_age_s old: fresh
        (3, _AT - timedelta(seconds=60) - _TICK, True),
        (3, _AT, False),  # exactly min_readings
        (2, _AT, True),
        (0, None, True),
    ],
)
def test_stale_boundaries_exactly_max_age_s_old_and_exactly_min_readings_are_fresh(
    count: int, newest: datetime | None, is_stale: bool
) -> None:
    window = Window(10.0 if count else None, count, newest)
    found = stale_because(window, _AT, 3, 60, 600, "soil_moisture")
    assert (found is not None) == is_stale, found


def test_ages_read_in_hours_minutes_and_seconds_rounded_up() -> None:
    assert [seconds_words(s) for s in (0, 45, 60, 60.2, 900, 3661, 7200)] == [
        "0 s",
        "45 s",
        "1 min",
        "1 min 1 s",
        "15 min",
        "1 h 1 min 1 s",
        "2 h",
    ]


# Schedules -------------------------------------------------------------------------------


async def test_a_schedule_ignores_moisture_older_than_its_limit_and_runs_saying_so(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _ = await zone_and_pump(client, admin, "UTC")
    sensor = await make_sensor(client, admin, zone["id"])
    schedule = await make_schedule(
        client,
        admin,
        zone["id"],
        cron="* * * * *",
        skip_if_moisture_above=40,
        moisture_max_age_s=300,
    )
    await post_moisture(client, admin, sensor["id"], [60, 60], end=clock.utcnow())
    await fire_once(engine)  # wet, 61 s old: skipped
    clock.move(timedelta(seconds=300))
    await fire_once(engine)  # still wet, but 422 s old: ignored, the run goes ahead

    (skipped,) = await decisions(client, admin, zone["id"], outcome="skipped")
    assert skipped["reason"] == "soil_wet"
    assert "moisture" not in skipped["detail"]
    (run,) = await run_requests(client, admin)
    assert (run["schedule_id"], run["status"]) == (schedule["id"], "started")
    said = r"soil moisture ignored: newest reading 7 min \d+ s old \(limit 5 min\)"
    assert re.search(said, run["reason"]), run["reason"]
    (started,) = await decisions(client, admin, zone["id"], outcome="started")
    assert re.search(said, started["message"]), started["message"]


async def test_a_schedules_limit_may_let_an_older_reading_skip_its_run(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _ = await zone_and_pump(client, admin, "UTC")
    sensor = await make_sensor(client, admin, zone["id"])
    await make_schedule(
        client,
        admin,
        zone["id"],
        cron="* * * * *",
        skip_if_moisture_above=40,
        moisture_max_age_s=3600,
    )
    # Half an hour old: past the default 15 minutes, within this schedule's hour.
    await post_moisture(client, admin, sensor["id"], [55], end=clock.utcnow())
    clock.move(timedelta(minutes=30))
    await fire_once(engine)
    (skipped,) = await decisions(client, admin, zone["id"])
    assert skipped["message"] == "skipped: soil moisture 55.0 is above 40"
    assert await run_requests(client, admin) == []


async def test_a_skip_for_another_reason_also_says_the_moisture_was_unknown(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _ = await zone_and_pump(client, admin, "UTC", latitude=52.52, longitude=13.40)
    await make_sensor(client, admin, zone["id"])  # never reported
    await make_schedule(
        client,
        admin,
        zone["id"],
        cron="* * * * *",
        skip_if_moisture_above=40,
        skip_if_rain_forecast_mm=5,
    )
    engine.weather.set(rain_next_24h_mm=12)
    await fire_once(engine)
    (skipped,) = await decisions(client, admin, zone["id"])
    assert skipped["reason"] == "forecast_rain"
    assert skipped["detail"]["moisture"] == "ignored: no reading"
    assert "moisture_age_s" not in skipped["detail"]


async def test_a_reading_exactly_at_the_schedules_limit_still_counts(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone = await make_zone(client, admin)
    sensor = await make_sensor(client, admin, zone["id"])
    at = clock.utcnow().replace(microsecond=0) - timedelta(seconds=10)
    await post_moisture(client, admin, sensor["id"], [42], end=at)
    zone_id = uuid.UUID(zone["id"])

    async def average(moment: datetime) -> float | None:
        since = moment - timedelta(seconds=300)
        async with engine.sessions() as session:
            query = select(zone_average(zone_id, "soil_moisture", since, moment))
            found: float | None = (await session.execute(query)).scalar_one()
            return found

    assert await average(at + timedelta(seconds=300)) == 42
    assert await average(at + timedelta(seconds=300, microseconds=1)) is None


# The API ---------------------------------------------------------------------------------


async def test_rule_and_schedule_limits_have_defaults_and_can_be_patched(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    assert (rule["min_readings"], rule["max_age_s"]) == (1, 900)
    path = f"/v1/threshold-rules/{rule['id']}"
    body = {"version": 1, "min_readings": 4, "max_age_s": 120}
    patched = await client.patch(path, json=body, headers=admin)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["min_readings"], patched.json()["max_age_s"]) == (4, 120)

    schedule = await make_schedule(client, admin, zone["id"], start_times=["06:00"])
    assert schedule["moisture_max_age_s"] == 900
    path = f"/v1/schedules/{schedule['id']}"
    patched = await client.patch(
        path, json={"version": 1, "moisture_max_age_s": 7200}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["moisture_max_age_s"] == 7200


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"min_readings": 0}, "body.min_readings"),
        ({"min_readings": 10001}, "body.min_readings"),
        ({"max_age_s": 9}, "body.max_age_s"),
        ({"max_age_s": 86401}, "body.max_age_s"),
    ],
)
async def test_rule_limits_out_of_bounds_are_422_on_create_and_patch(
    client: httpx.AsyncClient, admin: Headers, fields: dict[str, Any], path: str
) -> None:
    zone = await make_zone(client, admin)
    body = {"zone_id": zone["id"], "start_below": 20.0, "stop_above": 30.0, "duration_s": 60}
    assert_invalid(
        await client.post("/v1/threshold-rules", json={**body, **fields}, headers=admin), path
    )
    rule = await make_rule(client, admin, zone["id"])
    rule_path = f"/v1/threshold-rules/{rule['id']}"
    assert_invalid(
        await client.patch(rule_path, json={"version": 1, **fields}, headers=admin), path
    )
    nulled = {"version": 1, **dict.fromkeys(fields)}
    assert_problem(
        await client.patch(rule_path, json=nulled, headers=admin), 422, "validation_error"
    )
    assert (await client.get(rule_path, headers=admin)).json() == rule


@pytest.mark.parametrize("value", [9, 86401, None])
async def test_schedule_moisture_limit_out_of_bounds_or_null_is_422(
    client: httpx.AsyncClient, admin: Headers, value: int | None
) -> None:
    zone = await make_zone(client, admin)
    body = {"zone_id": zone["id"], "duration_s": 60, "start_times": ["06:00"]}
    created = await client.post(
        "/v1/schedules", json={**body, "moisture_max_age_s": value}, headers=admin
    )
    assert_invalid(created, "body.moisture_max_age_s")
    schedule = await make_schedule(client, admin, zone["id"], start_times=["06:00"])
    path = f"/v1/schedules/{schedule['id']}"
    patched = await client.patch(
        path, json={"version": 1, "moisture_max_age_s": value}, headers=admin
    )
    assert_problem(patched, 422, "validation_error")
    assert (await client.get(path, headers=admin)).json() == schedule
