"""Weather lockouts: an automated run whose start hour is forecast too cold (`freeze`) or too
windy (`wind`) waits in the run queue, says so once per change, starts when the forecast for
the hour it would start in clears, and is skipped past its deadline. Without a usable
forecast the zone's `on_forecast_unavailable` runs or holds it. A person's runs are never
held. The clock is moved, the forecast is the in-memory fake's."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from irrigation.automation.lockouts import Limits, check
from irrigation.automation.models import Reason
from irrigation.common import clock
from irrigation.weather import Forecast, HourlyWeather, hour_start
from tests.automation.conftest import Engine, decisions, post_moisture, run_requests
from tests.automation.test_runqueue import queued, status_of
from tests.automation.test_schedules import fire_once, make_schedule, travel_to
from tests.automation.test_thresholds import make_rule, now
from tests.support.api import Headers
from tests.support.factories import activate, created, make_pump
from tests.support.problems import assert_invalid

LAT, LON = 52.52, 13.40


async def locked_zone(
    client: httpx.AsyncClient, admin: Headers, **lockouts: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A UTC zone with a place, the lockouts given, a pump and a moisture sensor."""
    body = {"name": "Orchard", "timezone": "UTC", "latitude": LAT, "longitude": LON, **lockouts}
    zone = await created(client, "/v1/zones", body, admin)
    pump = await make_pump(client, admin, "hw-orchard", zone_id=zone["id"])
    sensor = await created(
        client,
        "/v1/sensors",
        {"zone_id": zone["id"], "name": "m1", "kind": "soil_moisture", "unit": "%"},
        admin,
    )
    return zone, pump, sensor


async def dry_rule_asks(
    client: httpx.AsyncClient, admin: Headers, engine: Engine, zone_id: str, sensor_id: str
) -> dict[str, Any]:
    """A threshold rule, dry readings, one evaluation: its run request, still waiting (the
    evaluation's own dispatch cannot judge lockouts, so it leaves the run to the dispatcher
    and says nothing)."""
    await make_rule(client, admin, zone_id)
    await post_moisture(client, admin, sensor_id, [10, 10], end=now())
    assert await engine.evaluate() == 1
    (request,) = await run_requests(client, admin)
    assert (request["status"], request["last_reason"]) == ("waiting", None)
    assert await decisions(client, admin, zone_id) == []
    return request


def minutes_before_an_hour(minutes: int) -> datetime:
    """Travel to `minutes` before the start of an hour (later today or tomorrow); returns
    that hour's start."""
    next_hour = hour_start(clock.utcnow()) + timedelta(hours=2)
    travel_to(next_hour - timedelta(minutes=minutes))
    return next_hour


# The check itself --------------------------------------------------------------------------

HOUR = datetime(2026, 1, 15, 6, tzinfo=UTC)


def forecast_of(temperature: float | None, wind: float | None) -> Forecast:
    hours = [HourlyWeather(HOUR + timedelta(hours=h), 20.0, 0.0) for h in (-1, 1)]
    return Forecast(LAT, LON, [], [], [*hours, HourlyWeather(HOUR, temperature, wind)], HOUR)


def limits(**changes: Any) -> Limits:
    values: dict[str, Any] = {
        "min_temp_c": 2.0,
        "max_wind_kmh": 30.0,
        "max_forecast_age_s": 10800,
        "on_forecast_unavailable": "run",
        "latitude": LAT,
        "longitude": LON,
        "timezone": "Europe/Berlin",
    }
    return Limits(**{**values, **changes})


@pytest.mark.parametrize(
    ("temperature", "wind", "reason"),
    [
        (1.9, 10.0, Reason.freeze),
        (2.0, 30.0, None),  # exactly at a limit is not past it
        (15.0, 30.5, Reason.wind),
        (-4.0, 55.0, Reason.freeze),
    ],
)
def test_the_forecast_for_the_start_hour_is_judged_against_the_limits(
    temperature: float, wind: float, reason: Reason | None
) -> None:
    verdict = check(forecast_of(temperature, wind), limits(), HOUR + timedelta(minutes=59))
    assert verdict.reason == reason
    assert verdict.detail["hour"] == HOUR.isoformat()
    assert (verdict.detail["temperature_c"], verdict.detail["wind_kmh"]) == (temperature, wind)


def test_the_sentences_name_the_values_the_limits_and_the_local_hour() -> None:
    cold = check(forecast_of(-4.0, 55.0), limits(), HOUR)
    assert cold.message == (
        "frost lockout: -4.0 °C forecast for 2026-01-15 07:00 Europe/Berlin, below 2 °C "
        "(and 55 km/h of wind forecast for 2026-01-15 07:00 Europe/Berlin, above 30 km/h)"
    )
    windy = check(forecast_of(10.0, 42.5), limits(min_temp_c=None), HOUR)
    assert windy.message == (
        "wind lockout: 42.5 km/h of wind forecast for 2026-01-15 07:00 Europe/Berlin, above 30 km/h"
    )


@pytest.mark.parametrize(("policy", "reason"), [("run", None), ("hold", "forecast_unavailable")])
def test_a_forecast_without_the_hours_value_is_no_forecast(policy: str, reason: str | None) -> None:
    verdict = check(forecast_of(None, 5.0), limits(on_forecast_unavailable=policy), HOUR)
    assert verdict.reason == reason
    assert verdict.detail["forecast"] == (
        "the forecast has no temperature for 2026-01-15 07:00 Europe/Berlin"
    )
    # Only the limits that are set need their value.
    assert check(forecast_of(None, 5.0), limits(min_temp_c=None), HOUR).reason is None


# Through the run queue ---------------------------------------------------------------------


async def test_frost_defers_a_threshold_run_until_the_forecast_for_its_start_hour_warms(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    warm_hour = minutes_before_an_hour(10)
    zone, _, sensor = await locked_zone(client, admin, min_temp_c=2)
    engine.weather.set(temperature_c=-3.0)
    engine.weather.set_hour(warm_hour, temperature_c=4.0)
    request = await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])

    for _ in range(4):  # judged at every pass, said once
        assert await engine.dispatch() == 0
        clock.move(timedelta(minutes=2))
    assert await status_of(client, admin, request["id"]) == "waiting"
    (frost,) = await decisions(client, admin, zone["id"])
    assert (frost["outcome"], frost["reason"]) == ("deferred", "freeze")
    assert frost["run_request_id"] == request["id"]
    cold_hour = warm_hour - timedelta(hours=1)
    assert frost["message"].startswith(
        f"deferred: frost lockout: -3.0 °C forecast for {cold_hour:%Y-%m-%d %H:%M} UTC, "
        "below 2 °C; waits until "
    )
    assert frost["detail"]["hour"] == cold_hour.isoformat()
    assert (frost["detail"]["temperature_c"], frost["detail"]["min_temp_c"]) == (-3.0, 2.0)

    travel_to(warm_hour + timedelta(minutes=1))  # the start's hour is now the warm one
    assert await engine.dispatch() == 1
    assert await status_of(client, admin, request["id"]) == "started"
    started, _ = await decisions(client, admin, zone["id"])
    assert started["reason"] == "started"
    assert started["detail"]["lockouts"]["temperature_c"] == 4.0
    assert started["detail"]["lockouts"]["hour"] == warm_hour.isoformat()


async def test_wind_then_frost_each_say_so_once_and_a_calm_warm_forecast_starts_the_run(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, _ = await locked_zone(client, admin, min_temp_c=0, max_wind_kmh=30)
    engine.weather.set(wind_kmh=45.0)
    schedule = await make_schedule(client, admin, zone["id"], cron="* * * * *")
    await fire_once(engine)
    (request,) = await run_requests(client, admin)
    for _ in range(3):
        assert await engine.dispatch() == 0
    engine.weather.set(temperature_c=-1.0)  # now freezing as well: frost is the reason
    for _ in range(3):
        assert await engine.dispatch() == 0
    engine.weather.set(temperature_c=8.0, wind_kmh=12.0)
    assert await engine.dispatch() == 1

    shown = await decisions(client, admin, zone["id"])
    assert [d["reason"] for d in reversed(shown)] == ["wind", "freeze", "started"]
    assert {d["schedule_id"] for d in shown} == {schedule["id"]}
    wind = shown[-1]
    assert wind["message"].startswith("deferred: wind lockout: 45 km/h of wind forecast for ")
    assert (wind["detail"]["wind_kmh"], wind["detail"]["max_wind_kmh"]) == (45.0, 30.0)
    assert await status_of(client, admin, request["id"]) == "started"


async def test_a_run_locked_out_until_its_deadline_is_skipped_and_its_rule_re_armed(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(client, admin, min_temp_c=2)
    engine.weather.set(temperature_c=-6.0)
    request = await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch() == 0
    clock.move(timedelta(seconds=engine.settings.threshold_run_deadline_s + 1))
    assert await engine.dispatch() == 0

    assert await status_of(client, admin, request["id"]) == "skipped"
    skipped, deferred = await decisions(client, admin, zone["id"])
    assert (deferred["outcome"], deferred["reason"]) == ("deferred", "freeze")
    assert (skipped["outcome"], skipped["reason"]) == ("skipped", "deadline_passed")
    assert "(last held back by: freeze)" in skipped["message"]
    assert skipped["detail"] == {"last_reason": "freeze"}
    rule = (await client.get(f"/v1/threshold-rules/{request['rule_id']}", headers=admin)).json()
    assert rule["armed"]


async def test_only_the_judging_pass_starts_a_run_of_a_zone_with_lockouts(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(client, admin, max_wind_kmh=50)
    request = await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch(judge=False) == 0  # as after a trigger, or in the API
    assert await status_of(client, admin, request["id"]) == "waiting"
    assert await engine.dispatch() == 1
    (started,) = await decisions(client, admin, zone["id"])
    assert started["detail"]["lockouts"]["wind_kmh"] == 5.0


# Without a usable forecast ------------------------------------------------------------------


async def test_no_forecast_with_run_starts_the_run_and_says_the_lockouts_were_not_checked(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(client, admin, min_temp_c=2)
    engine.weather.set(temperature_c=-3.0)
    engine.weather.fail = True
    await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch() == 1
    (started,) = await decisions(client, admin, zone["id"])
    assert started["message"].endswith("; weather lockouts not checked: weather unavailable"), (
        started["message"]
    )
    assert started["detail"]["lockouts"]["on_forecast_unavailable"] == "run"


async def test_no_forecast_with_hold_holds_the_run_until_a_forecast_comes_back(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(client, admin, min_temp_c=2, on_forecast_unavailable="hold")
    engine.weather.fail = True
    request = await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    for _ in range(3):
        assert await engine.dispatch() == 0
    (held,) = await decisions(client, admin, zone["id"])
    assert (held["outcome"], held["reason"]) == ("deferred", "forecast_unavailable")
    assert held["message"].startswith(
        "deferred: weather lockouts: no usable forecast (weather unavailable); held "
        "(on_forecast_unavailable hold); waits until "
    )
    engine.weather.fail = False
    assert await engine.dispatch() == 1
    assert await status_of(client, admin, request["id"]) == "started"


async def test_a_forecast_older_than_the_zones_limit_is_no_forecast_a_younger_one_is_judged(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(
        client, admin, min_temp_c=2, max_forecast_age_s=3 * 3600, on_forecast_unavailable="hold"
    )
    engine.weather.set(temperature_c=-2.0)
    engine.weather.fail = True  # no fetch; the last known forecast is 4 h old
    engine.weather.last_known_age_s = 4 * 3600 + 30
    await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch() == 0
    engine.weather.last_known_age_s = 3600  # within the limit: judged, and it says frost
    assert await engine.dispatch() == 0

    frost, stale = await decisions(client, admin, zone["id"])
    assert stale["reason"] == "forecast_unavailable"
    assert "the newest forecast is 4 h 30 s old (limit 3 h)" in stale["message"]
    assert stale["detail"]["forecast_age_s"] == pytest.approx(4 * 3600 + 30, abs=1)
    assert frost["reason"] == "freeze"
    # Measured from the fake's wall clock when the run is judged: a loaded machine moves it
    # by seconds between `set` and the dispatch, never by the 3 h that would change the verdict.
    assert frost["detail"]["forecast_age_s"] == pytest.approx(3600, abs=15)


async def test_a_zone_with_lockouts_but_no_place_has_no_forecast(
    client: httpx.AsyncClient, admin: Headers, engine: Engine
) -> None:
    zone, _, sensor = await locked_zone(client, admin, min_temp_c=2, on_forecast_unavailable="hold")
    version = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()["version"]
    patched = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": version, "latitude": None}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch() == 0
    (held,) = await decisions(client, admin, zone["id"])
    assert held["detail"]["forecast"] == "the zone has no latitude/longitude"


# People ----------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["manual", "emergency"])
async def test_a_persons_runs_start_in_a_frost_that_holds_the_automations(
    client: httpx.AsyncClient, admin: Headers, engine: Engine, priority: str
) -> None:
    zone, pump, sensor = await locked_zone(client, admin, min_temp_c=2)
    engine.weather.set(temperature_c=-8.0)
    automated = await dry_rule_asks(client, admin, engine, zone["id"], sensor["id"])
    assert await engine.dispatch() == 0

    direct = await activate(client, admin, pump["id"], 5, priority=priority)
    assert direct.status_code == 202, direct.text
    assert direct.json()["kind"] == "activation"
    # Queued behind it, it supersedes the automation's run, as any person's request does.
    person = await queued(client, admin, pump["id"], "append", priority=priority)
    assert person["status"] == "waiting"
    await client.post(f"/v1/pumps/{pump['id']}/stop", headers=admin)
    assert await engine.dispatch() == 1  # the judging pass: frost, and it starts
    assert await status_of(client, admin, person["id"]) == "started"
    assert await status_of(client, admin, automated["id"]) == "superseded"
    reasons = [d["reason"] for d in await decisions(client, admin, zone["id"])]
    assert reasons == ["started", "pump_busy", "superseded", "freeze"]


# The zone's settings ------------------------------------------------------------------------


async def test_a_zones_lockout_settings_default_off_and_are_patched_and_cleared(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await created(client, "/v1/zones", {"name": "Beds", "timezone": "UTC"}, admin)
    assert (zone["min_temp_c"], zone["max_wind_kmh"]) == (None, None)
    assert (zone["max_forecast_age_s"], zone["on_forecast_unavailable"]) == (10800, "run")
    changes = {
        "min_temp_c": -1.5,
        "max_wind_kmh": 35,
        "max_forecast_age_s": 3600,
        "on_forecast_unavailable": "hold",
    }
    patched = await client.patch(
        f"/v1/zones/{zone['id']}", json={"version": 1, **changes}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**zone, **changes, "version": 2}
    cleared = await client.patch(
        f"/v1/zones/{zone['id']}",
        json={"version": 2, "min_temp_c": None, "max_wind_kmh": None},
        headers=admin,
    )
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["min_temp_c"], cleared.json()["max_wind_kmh"]) == (None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_temp_c", -61),
        ("min_temp_c", "cold"),
        ("max_wind_kmh", 0),
        ("max_wind_kmh", 401),
        ("max_forecast_age_s", 59),
        ("max_forecast_age_s", 86401),
        ("on_forecast_unavailable", "maybe"),
    ],
)
async def test_lockout_settings_out_of_bounds_are_422_naming_the_field(
    client: httpx.AsyncClient, admin: Headers, field: str, value: Any
) -> None:
    body = {"name": "Beds", "timezone": "UTC", field: value}
    assert_invalid(await client.post("/v1/zones", json=body, headers=admin), f"body.{field}")
    zone = await created(client, "/v1/zones", {"name": "Beds", "timezone": "UTC"}, admin)
    patch = {"version": 1, field: value}
    response = await client.patch(f"/v1/zones/{zone['id']}", json=patch, headers=admin)
    assert_invalid(response, f"body.{field}")


async def test_max_forecast_age_and_the_policy_may_not_be_cleared(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await created(client, "/v1/zones", {"name": "Beds", "timezone": "UTC"}, admin)
    for field in ("max_forecast_age_s", "on_forecast_unavailable"):
        patch = {"version": 1, field: None}
        response = await client.patch(f"/v1/zones/{zone['id']}", json=patch, headers=admin)
        assert response.status_code == 422, response.text
