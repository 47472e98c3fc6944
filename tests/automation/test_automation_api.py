"""The automation API, black-box over HTTP: threshold rules, schedules, rain delays, the
site pause, queued activations, the run queue and the decisions log. No worker runs: an
admitted activation stays queued and keeps its pump busy."""

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from irrigation.common import clock
from tests.support.api import Headers, bearer
from tests.support.factories import (
    MakeKey,
    activate,
    make_pump,
    make_rule,
    make_schedule,
    make_zone,
)
from tests.support.problems import assert_invalid, assert_problem

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
async def reader(make_key: MakeKey) -> Headers:
    """Headers of a read-only key of site A."""
    return bearer(await make_key("read"))


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def travel_to(moment: datetime) -> None:
    clock.move(moment - clock.utcnow())


# Threshold rules -----------------------------------------------------------------------


async def test_rule_is_created_with_defaults_and_read_back(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"], name="  Dry beds  ")
    assert rule["zone_id"] == zone["id"]
    assert rule["pump_id"] is None
    assert rule["name"] == "Dry beds"
    assert rule["sensor_kind"] == "soil_moisture"
    assert rule["window_s"] == 900
    assert rule["armed"] is True
    assert rule["enabled"] is True
    assert rule["version"] == 1
    assert (rule["start_below"], rule["stop_above"], rule["duration_s"]) == (20.0, 30.0, 60)
    assert rule["last_value"] is rule["last_triggered_at"] is rule["last_evaluated_at"] is None
    again = await client.get(f"/v1/threshold-rules/{rule['id']}", headers=admin)
    assert again.status_code == 200, again.text
    assert again.json() == rule


async def test_rule_with_a_pump_of_its_zone_is_accepted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, "hw-rule", zone_id=zone["id"])
    rule = await make_rule(client, admin, zone["id"], pump_id=pump["id"])
    assert rule["pump_id"] == pump["id"]


async def test_rule_fields_other_than_the_defaults_are_kept_and_patched(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    pump = await make_pump(client, admin, "hw-rule", zone_id=zone["id"])
    rule = await make_rule(
        client,
        admin,
        zone["id"],
        pump_id=pump["id"],
        sensor_kind="humidity",
        window_s=60,
        enabled=False,
        start_below=-5.5,
        stop_above=-1.0,
    )
    assert (rule["sensor_kind"], rule["window_s"], rule["enabled"]) == ("humidity", 60, False)
    assert (rule["start_below"], rule["stop_above"]) == (-5.5, -1.0)
    patched = await client.patch(
        f"/v1/threshold-rules/{rule['id']}",
        json={"version": 1, "sensor_kind": "temperature", "pump_id": None, "name": "Frost"},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["sensor_kind"], body["pump_id"], body["name"]) == ("temperature", None, "Frost")
    assert (body["window_s"], body["start_below"], body["version"]) == (60, -5.5, 2)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"start_below": 30.0, "stop_above": 30.0}, "body"),
        ({"start_below": 40.0, "stop_above": 30.0}, "body"),
        ({"duration_s": 0}, "body.duration_s"),
        ({"duration_s": 3601}, "body.duration_s"),
        ({"window_s": 59}, "body.window_s"),
        ({"sensor_kind": "moonlight"}, "body.sensor_kind"),
        ({"zone_id": str(uuid.UUID(int=1))}, "body.zone_id"),
        ({"colour": "green"}, "body.colour"),
    ],
)
async def test_invalid_rule_is_422_naming_the_field(
    client: httpx.AsyncClient, admin: Headers, fields: dict[str, Any], path: str
) -> None:
    zone = await make_zone(client, admin)
    body = {"zone_id": zone["id"], "start_below": 20.0, "stop_above": 30.0, "duration_s": 60}
    response = await client.post("/v1/threshold-rules", json={**body, **fields}, headers=admin)
    assert_invalid(response, path)
    listed = await client.get("/v1/threshold-rules", headers=admin)
    assert listed.json()["items"] == []


async def test_rule_on_another_sites_zone_or_another_zones_pump_is_422(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    other_zone = await make_zone(client, admin, "South field")
    foreign_zone = await make_zone(client, other_admin)
    pump_elsewhere = await make_pump(client, admin, "hw-south", zone_id=other_zone["id"])
    foreign_pump = await make_pump(client, other_admin, "hw-foreign", zone_id=foreign_zone["id"])
    body = {"start_below": 20.0, "stop_above": 30.0, "duration_s": 60}

    response = await client.post(
        "/v1/threshold-rules", json={**body, "zone_id": foreign_zone["id"]}, headers=admin
    )
    assert_invalid(response, "body.zone_id")
    for pump in (pump_elsewhere, foreign_pump):
        response = await client.post(
            "/v1/threshold-rules",
            json={**body, "zone_id": zone["id"], "pump_id": pump["id"]},
            headers=admin,
        )
        assert_invalid(response, "body.pump_id")


async def test_rules_list_filters_by_zone_and_pages_with_a_cursor(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    north = await make_zone(client, admin)
    south = await make_zone(client, admin, "South field")
    first = await make_rule(client, admin, north["id"], name="one")
    second = await make_rule(client, admin, north["id"], name="two")
    in_south = await make_rule(client, admin, south["id"], name="three")
    await make_rule(client, other_admin, (await make_zone(client, other_admin))["id"])

    everything = await client.get("/v1/threshold-rules", headers=admin)
    assert {r["id"] for r in everything.json()["items"]} == {
        first["id"],
        second["id"],
        in_south["id"],
    }

    page = await client.get(
        "/v1/threshold-rules", params={"zone_id": north["id"], "limit": 1}, headers=admin
    )
    assert page.status_code == 200, page.text
    assert len(page.json()["items"]) == 1
    cursor = page.json()["next_cursor"]
    assert cursor
    rest = await client.get(
        "/v1/threshold-rules",
        params={"zone_id": north["id"], "limit": 1, "cursor": cursor},
        headers=admin,
    )
    assert rest.status_code == 200, rest.text
    seen = [page.json()["items"][0]["id"], rest.json()["items"][0]["id"]]
    assert sorted(seen) == sorted([first["id"], second["id"]])
    if rest.json()["next_cursor"] is not None:
        last = await client.get(
            "/v1/threshold-rules",
            params={"zone_id": north["id"], "limit": 1, "cursor": rest.json()["next_cursor"]},
            headers=admin,
        )
        assert last.json() == {"items": [], "next_cursor": None}

    only_south = await client.get(
        "/v1/threshold-rules", params={"zone_id": south["id"]}, headers=admin
    )
    assert [r["id"] for r in only_south.json()["items"]] == [in_south["id"]]


async def test_rule_patch_needs_the_current_version(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    path = f"/v1/threshold-rules/{rule['id']}"

    unversioned = await client.patch(path, json={"duration_s": 90}, headers=admin)
    assert_problem(unversioned, 428, "version_required")

    changed = await client.patch(path, json={"version": 1, "duration_s": 90}, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    assert changed.json()["duration_s"] == 90

    stale = await client.patch(path, json={"version": 1, "duration_s": 120}, headers=admin)
    problem = assert_problem(stale, 409, "stale_version")
    assert problem["current_version"] == 2

    by_header = await client.patch(
        path, json={"enabled": False}, headers={**admin, "If-Match": '"2"'}
    )
    assert by_header.status_code == 200, by_header.text
    assert by_header.json()["version"] == 3
    assert by_header.json()["enabled"] is False

    current = (await client.get(path, headers=admin)).json()
    assert (current["version"], current["duration_s"], current["enabled"]) == (3, 90, False)


@pytest.mark.parametrize(
    "fields",
    [
        {"start_below": 30.0},
        {"start_below": 35.0},
        {"stop_above": 10.0},
        {"start_below": 50.0, "stop_above": 40.0},
    ],
)
async def test_rule_patch_that_inverts_the_hysteresis_is_422_and_changes_nothing(
    client: httpx.AsyncClient, admin: Headers, fields: dict[str, Any]
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    path = f"/v1/threshold-rules/{rule['id']}"
    response = await client.patch(path, json={"version": 1, **fields}, headers=admin)
    assert_problem(response, 422, "validation_error")
    assert (await client.get(path, headers=admin)).json() == rule


async def test_rule_patch_may_not_null_a_required_field_nor_move_to_another_zones_pump(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    other = await make_zone(client, admin, "South field")
    pump_elsewhere = await make_pump(client, admin, "hw-south", zone_id=other["id"])
    rule = await make_rule(client, admin, zone["id"])
    path = f"/v1/threshold-rules/{rule['id']}"
    nulled = await client.patch(path, json={"version": 1, "duration_s": None}, headers=admin)
    assert_problem(nulled, 422, "validation_error")
    moved = await client.patch(
        path, json={"version": 1, "pump_id": pump_elsewhere["id"]}, headers=admin
    )
    assert_invalid(moved, "body.pump_id")
    assert (await client.get(path, headers=admin)).json() == rule


async def test_rule_delete_is_204_then_404(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    path = f"/v1/threshold-rules/{rule['id']}"
    deleted = await client.delete(path, headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""
    assert_problem(await client.get(path, headers=admin), 404, "not_found")
    assert_problem(await client.delete(path, headers=admin), 404, "not_found")
    assert_problem(
        await client.patch(path, json={"version": 1, "duration_s": 5}, headers=admin),
        404,
        "not_found",
    )


async def test_another_sites_rule_is_404_on_get_patch_and_delete(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    theirs = await make_rule(client, other_admin, (await make_zone(client, other_admin))["id"])
    path = f"/v1/threshold-rules/{theirs['id']}"
    assert_problem(await client.get(path, headers=admin), 404, "not_found")
    patch = await client.patch(path, json={"version": 1, "duration_s": 5}, headers=admin)
    assert_problem(patch, 404, "not_found")
    assert_problem(await client.delete(path, headers=admin), 404, "not_found")
    listed = await client.get("/v1/threshold-rules", headers=admin)
    assert listed.json()["items"] == []
    # Unchanged for its owner.
    assert (await client.get(path, headers=other_admin)).json() == theirs


async def test_read_key_can_list_and_get_rules_but_not_change_them(
    client: httpx.AsyncClient, admin: Headers, reader: Headers
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    path = f"/v1/threshold-rules/{rule['id']}"
    assert (await client.get(path, headers=reader)).json() == rule
    listed = await client.get("/v1/threshold-rules", headers=reader)
    assert [r["id"] for r in listed.json()["items"]] == [rule["id"]]

    body = {"zone_id": zone["id"], "start_below": 1.0, "stop_above": 2.0, "duration_s": 5}
    posted = await client.post("/v1/threshold-rules", json=body, headers=reader)
    assert_problem(posted, 403, "insufficient_scope")
    patched = await client.patch(path, json={"version": 1, "duration_s": 5}, headers=reader)
    assert_problem(patched, 403, "insufficient_scope")
    assert_problem(await client.delete(path, headers=reader), 403, "insufficient_scope")
    assert (await client.get(path, headers=admin)).json() == rule


async def test_zone_referenced_by_a_rule_cannot_be_deleted_409_in_use(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    rule = await make_rule(client, admin, zone["id"])
    refused = await client.delete(f"/v1/zones/{zone['id']}", headers=admin)
    assert_problem(refused, 409, "in_use")
    assert (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).status_code == 200
    assert (
        await client.delete(f"/v1/threshold-rules/{rule['id']}", headers=admin)
    ).status_code == 204
    assert (await client.delete(f"/v1/zones/{zone['id']}", headers=admin)).status_code == 204


# Schedules -----------------------------------------------------------------------------


def next_local(after: datetime, weekdays: set[int], wall: time, tz: ZoneInfo) -> datetime:
    """The first `wall` local time on one of `weekdays` strictly after `after`, in UTC."""
    day: date = after.astimezone(tz).date()
    while True:
        if day.weekday() in weekdays:
            candidate = datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)
            if candidate > after:
                return candidate
        day += timedelta(days=1)


async def test_weekday_schedule_next_run_is_the_next_monday_or_wednesday_0600_in_berlin(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    before = datetime.now(UTC)
    schedule = await make_schedule(
        client, admin, zone["id"], start_times=["06:00"], weekdays=["mon", "wed"]
    )
    after = datetime.now(UTC)
    assert schedule["weekdays"] == ["mon", "wed"]
    assert schedule["start_times"] == ["06:00"]
    assert schedule["cron"] is None
    assert schedule["enabled"] is True
    assert schedule["last_run_at"] is None
    next_run = at(schedule["next_run_at"])
    assert next_run is not None
    # A request straddling 06:00 Berlin may see either side of it.
    assert next_run in {
        next_local(before, {0, 2}, time(6), BERLIN),
        next_local(after, {0, 2}, time(6), BERLIN),
    }
    local = next_run.astimezone(BERLIN)
    assert local.weekday() in (0, 2)
    assert (local.hour, local.minute) == (6, 0)
    assert before < next_run <= before + timedelta(days=7)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Wednesday 12:00 CEST: this morning has passed, so next Monday 06:00 CEST.
        (datetime(2026, 6, 3, 10, 0, tzinfo=UTC), "2026-06-08T04:00:00Z"),
        # Wednesday 05:00 CEST: this morning still.
        (datetime(2026, 6, 3, 3, 0, tzinfo=UTC), "2026-06-03T04:00:00Z"),
        # Sunday 23:30 CET (22:30 UTC): Monday 06:00 CET, an hour further from UTC in winter.
        (datetime(2026, 11, 29, 22, 30, tzinfo=UTC), "2026-11-30T05:00:00Z"),
        # Monday 06:00 CET exactly: strictly after, so Wednesday.
        (datetime(2026, 11, 30, 5, 0, tzinfo=UTC), "2026-12-02T05:00:00Z"),
    ],
)
async def test_weekday_schedule_next_run_at_fixed_moments(
    client: httpx.AsyncClient, admin: Headers, now: datetime, expected: str
) -> None:
    zone = await make_zone(client, admin)
    travel_to(now)
    schedule = await make_schedule(client, admin, zone["id"], weekdays=["wed", "mon"])
    assert schedule["next_run_at"] == expected


async def test_cron_schedule_runs_at_0600_berlin_within_a_day(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    before = datetime.now(UTC)
    schedule = await make_schedule(client, admin, zone["id"], start_times=None, cron="0 6 * * *")
    after = datetime.now(UTC)
    assert schedule["cron"] == "0 6 * * *"
    assert schedule["start_times"] is None
    assert schedule["weekdays"] is None
    every_day = set(range(7))
    next_run = at(schedule["next_run_at"])
    assert next_run in {
        next_local(before, every_day, time(6), BERLIN),
        next_local(after, every_day, time(6), BERLIN),
    }


async def test_cron_schedule_at_a_fixed_moment(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = await make_zone(client, admin)
    travel_to(datetime(2026, 6, 3, 10, 0, tzinfo=UTC))
    schedule = await make_schedule(client, admin, zone["id"], start_times=None, cron="0 6 * * *")
    assert schedule["next_run_at"] == "2026-06-04T04:00:00Z"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"cron": "0 6 * * *", "start_times": ["06:00"]}, "body"),
        ({"start_times": None}, "body"),
        ({"start_times": []}, "body"),
        ({"start_times": None, "cron": "61 * * * *"}, "body"),
        ({"start_times": None, "cron": "0 6 * *"}, "body"),
        ({"start_times": None, "cron": "0 6 * * *", "weekdays": ["mon"]}, "body"),
        ({"start_times": ["25:00"]}, "body"),
        ({"start_times": ["6:00"]}, "body.start_times.0"),
        ({"start_times": ["06:00", "06:00"]}, "body"),
        ({"weekdays": ["fun"]}, "body.weekdays.0"),
        ({"weekdays": ["mon", "mon"]}, "body"),
        ({"duration_s": 0}, "body.duration_s"),
        ({"max_delay_s": 59}, "body.max_delay_s"),
        ({"zone_id": str(uuid.UUID(int=2))}, "body.zone_id"),
    ],
)
async def test_invalid_schedule_is_422(
    client: httpx.AsyncClient, admin: Headers, fields: dict[str, Any], path: str
) -> None:
    zone = await make_zone(client, admin)
    body = {"zone_id": zone["id"], "duration_s": 60, "start_times": ["06:00"], **fields}
    response = await client.post("/v1/schedules", json=body, headers=admin)
    assert_invalid(response, path)
    assert (await client.get("/v1/schedules", headers=admin)).json()["items"] == []


async def test_schedule_with_another_zones_pump_is_422(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    other = await make_zone(client, admin, "South field")
    pump = await make_pump(client, admin, "hw-south", zone_id=other["id"])
    body = {"zone_id": zone["id"], "pump_id": pump["id"], "duration_s": 60, "cron": "0 6 * * *"}
    assert_invalid(await client.post("/v1/schedules", json=body, headers=admin), "body.pump_id")


async def test_disabling_a_schedule_clears_next_run_and_enabling_sets_it_again(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    schedule = await make_schedule(client, admin, zone["id"], weekdays=["mon", "wed"])
    path = f"/v1/schedules/{schedule['id']}"
    assert schedule["next_run_at"] is not None

    off = await client.patch(path, json={"version": 1, "enabled": False}, headers=admin)
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False
    assert off.json()["next_run_at"] is None
    assert off.json()["version"] == 2

    on = await client.patch(path, json={"version": 2, "enabled": True}, headers=admin)
    assert on.status_code == 200, on.text
    assert on.json()["enabled"] is True
    assert on.json()["next_run_at"] == schedule["next_run_at"]
    assert on.json()["version"] == 3

    # Another edit of a disabled schedule keeps it without a next run.
    await client.patch(path, json={"version": 3, "enabled": False}, headers=admin)
    renamed = await client.patch(path, json={"version": 4, "name": "Beds"}, headers=admin)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["next_run_at"] is None


async def test_schedule_patch_versions(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = await make_zone(client, admin)
    schedule = await make_schedule(client, admin, zone["id"])
    path = f"/v1/schedules/{schedule['id']}"
    assert_problem(
        await client.patch(path, json={"duration_s": 5}, headers=admin), 428, "version_required"
    )
    assert (
        await client.patch(path, json={"version": 1, "duration_s": 5}, headers=admin)
    ).status_code == 200
    stale = await client.patch(path, json={"version": 1, "duration_s": 7}, headers=admin)
    assert_problem(stale, 409, "stale_version")
    assert (await client.get(path, headers=admin)).json()["duration_s"] == 5


async def test_schedule_patch_start_times_moves_next_run(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    travel_to(datetime(2026, 6, 3, 10, 0, tzinfo=UTC))  # Wednesday 12:00 CEST
    schedule = await make_schedule(client, admin, zone["id"], weekdays=["mon", "wed"])
    assert schedule["next_run_at"] == "2026-06-08T04:00:00Z"
    path = f"/v1/schedules/{schedule['id']}"
    later = await client.patch(path, json={"version": 1, "start_times": ["18:30"]}, headers=admin)
    assert later.status_code == 200, later.text
    assert later.json()["next_run_at"] == "2026-06-03T16:30:00Z"
    every_day = await client.patch(path, json={"version": 2, "weekdays": None}, headers=admin)
    assert every_day.status_code == 200, every_day.text
    assert every_day.json()["weekdays"] is None
    assert every_day.json()["next_run_at"] == "2026-06-03T16:30:00Z"
    bad = await client.patch(path, json={"version": 3, "start_times": ["24:00"]}, headers=admin)
    assert_problem(bad, 422, "validation_error")
    emptied = await client.patch(path, json={"version": 3, "start_times": None}, headers=admin)
    assert_problem(emptied, 422, "validation_error")


async def test_switching_a_schedule_to_cron_needs_start_times_null(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    travel_to(datetime(2026, 6, 3, 10, 0, tzinfo=UTC))
    schedule = await make_schedule(client, admin, zone["id"])
    path = f"/v1/schedules/{schedule['id']}"

    both = await client.patch(path, json={"version": 1, "cron": "0 7 * * *"}, headers=admin)
    assert_invalid(both, "body.cron")
    assert (await client.get(path, headers=admin)).json() == schedule

    switched = await client.patch(
        path, json={"version": 1, "cron": "0 7 * * *", "start_times": None}, headers=admin
    )
    assert switched.status_code == 200, switched.text
    body = switched.json()
    assert (body["cron"], body["start_times"], body["version"]) == ("0 7 * * *", None, 2)
    assert body["next_run_at"] == "2026-06-04T05:00:00Z"

    # And back: start times need `cron: null`.
    back = await client.patch(path, json={"version": 2, "start_times": ["06:00"]}, headers=admin)
    assert_invalid(back, "body.cron")
    back = await client.patch(
        path, json={"version": 2, "start_times": ["06:00"], "cron": None}, headers=admin
    )
    assert back.status_code == 200, back.text
    assert back.json()["next_run_at"] == "2026-06-04T04:00:00Z"


async def test_switching_a_weekday_schedule_to_cron_needs_weekdays_null_too(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    schedule = await make_schedule(client, admin, zone["id"], weekdays=["mon"])
    path = f"/v1/schedules/{schedule['id']}"
    kept_days = await client.patch(
        path, json={"version": 1, "cron": "0 7 * * 1", "start_times": None}, headers=admin
    )
    assert_invalid(kept_days, "body.cron")
    switched = await client.patch(
        path,
        json={"version": 1, "cron": "0 7 * * 1", "start_times": None, "weekdays": None},
        headers=admin,
    )
    assert switched.status_code == 200, switched.text
    next_run = at(switched.json()["next_run_at"])
    assert next_run is not None
    local = next_run.astimezone(BERLIN)
    assert (local.weekday(), local.hour, local.minute) == (0, 7, 0)


async def test_schedule_delete_and_another_sites_schedule_is_404(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, reader: Headers
) -> None:
    theirs = await make_schedule(client, other_admin, (await make_zone(client, other_admin))["id"])
    path = f"/v1/schedules/{theirs['id']}"
    assert_problem(await client.get(path, headers=admin), 404, "not_found")
    patch = await client.patch(path, json={"version": 1, "enabled": False}, headers=admin)
    assert_problem(patch, 404, "not_found")
    assert_problem(await client.delete(path, headers=admin), 404, "not_found")
    assert (await client.get("/v1/schedules", headers=admin)).json()["items"] == []
    assert (await client.get(path, headers=other_admin)).json() == theirs

    mine = await make_schedule(client, admin, (await make_zone(client, admin))["id"])
    own = f"/v1/schedules/{mine['id']}"
    assert (await client.get(own, headers=reader)).json() == mine
    assert_problem(await client.delete(own, headers=reader), 403, "insufficient_scope")
    deleted = await client.delete(own, headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert_problem(await client.get(own, headers=admin), 404, "not_found")
    assert_problem(await client.delete(own, headers=admin), 404, "not_found")


async def test_schedules_list_filters_by_zone_and_pages(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    north = await make_zone(client, admin)
    south = await make_zone(client, admin, "South field")
    a = await make_schedule(client, admin, north["id"])
    b = await make_schedule(client, admin, north["id"], start_times=["07:00"])
    c = await make_schedule(client, admin, south["id"])
    page = await client.get(
        "/v1/schedules", params={"zone_id": north["id"], "limit": 1}, headers=admin
    )
    assert len(page.json()["items"]) == 1
    assert page.json()["next_cursor"]
    rest = await client.get(
        "/v1/schedules",
        params={"zone_id": north["id"], "limit": 1, "cursor": page.json()["next_cursor"]},
        headers=admin,
    )
    ids = {page.json()["items"][0]["id"], rest.json()["items"][0]["id"]}
    assert ids == {a["id"], b["id"]}
    south_only = await client.get("/v1/schedules", params={"zone_id": south["id"]}, headers=admin)
    assert [s["id"] for s in south_only.json()["items"]] == [c["id"]]


async def test_zone_referenced_by_a_schedule_cannot_be_deleted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    await make_schedule(client, admin, zone["id"])
    assert_problem(await client.delete(f"/v1/zones/{zone['id']}", headers=admin), 409, "in_use")


# Rain delay and pause ------------------------------------------------------------------


def iso_in(delta: timedelta, tz: ZoneInfo = BERLIN) -> str:
    return (datetime.now(UTC) + delta).astimezone(tz).isoformat()


async def test_zone_rain_delay_is_set_shown_and_cleared(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin)
    assert zone["rain_delay_until"] is None
    until = iso_in(timedelta(hours=6))
    path = f"/v1/zones/{zone['id']}/rain-delay"
    response = await client.post(path, json={"until": until}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == zone["id"]
    assert at(response.json()["rain_delay_until"]) == at(until)
    shown = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert at(shown["rain_delay_until"]) == at(until)

    cleared = await client.delete(path, headers=admin)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["rain_delay_until"] is None
    shown = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert shown["rain_delay_until"] is None


@pytest.mark.parametrize(
    "until",
    [
        (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        (datetime.now(UTC) + timedelta(hours=2)).replace(tzinfo=None).isoformat(),
        "tomorrow",
        None,
    ],
    ids=["past", "naive", "garbage", "null"],
)
async def test_zone_rain_delay_needs_a_future_aware_time(
    client: httpx.AsyncClient, admin: Headers, until: str | None
) -> None:
    zone = await make_zone(client, admin)
    response = await client.post(
        f"/v1/zones/{zone['id']}/rain-delay", json={"until": until}, headers=admin
    )
    assert_invalid(response, "body.until")
    shown = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    assert shown["rain_delay_until"] is None


async def test_zone_rain_delay_of_another_site_is_404_and_needs_control(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, reader: Headers
) -> None:
    theirs = await make_zone(client, other_admin)
    path = f"/v1/zones/{theirs['id']}/rain-delay"
    body = {"until": iso_in(timedelta(hours=1))}
    assert_problem(await client.post(path, json=body, headers=admin), 404, "not_found")
    assert_problem(await client.delete(path, headers=admin), 404, "not_found")
    unknown = f"/v1/zones/{uuid.uuid4()}/rain-delay"
    assert_problem(await client.post(unknown, json=body, headers=admin), 404, "not_found")
    assert (await client.get(f"/v1/zones/{theirs['id']}", headers=other_admin)).json()[
        "rain_delay_until"
    ] is None

    mine = await make_zone(client, admin)
    own = f"/v1/zones/{mine['id']}/rain-delay"
    assert_problem(await client.post(own, json=body, headers=reader), 403, "insufficient_scope")
    assert_problem(await client.delete(own, headers=reader), 403, "insufficient_scope")


async def test_control_key_may_set_a_rain_delay(
    client: httpx.AsyncClient, admin: Headers, make_key: MakeKey
) -> None:
    control = bearer(await make_key("control"))
    zone = await make_zone(client, admin)
    response = await client.post(
        f"/v1/zones/{zone['id']}/rain-delay",
        json={"until": iso_in(timedelta(hours=1))},
        headers=control,
    )
    assert response.status_code == 200, response.text


async def test_site_rain_delay_and_pause(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    rain = iso_in(timedelta(days=1), ZoneInfo("America/New_York"))
    pause = iso_in(timedelta(hours=3))

    started = await client.post("/v1/sites/current/rain-delay", json={"until": rain}, headers=admin)
    assert started.status_code == 200, started.text
    assert started.headers["content-type"] == "application/json"
    assert at(started.json()["rain_delay_until"]) == at(rain)
    assert started.json()["paused_until"] is None

    paused = await client.post("/v1/sites/current/pause", json={"until": pause}, headers=admin)
    assert paused.status_code == 200, paused.text
    assert at(paused.json()["paused_until"]) == at(pause)
    assert at(paused.json()["rain_delay_until"]) == at(rain)
    site = (await client.get("/v1/sites/current", headers=admin)).json()
    assert at(site["paused_until"]) == at(pause)

    # Site B is untouched: its own state answers with nothing set.
    other = await client.delete("/v1/sites/current/pause", headers=other_admin)
    assert other.json() == {"paused_until": None, "rain_delay_until": None}

    resumed = await client.delete("/v1/sites/current/pause", headers=admin)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["paused_until"] is None
    assert at(resumed.json()["rain_delay_until"]) == at(rain)

    # The site says so too (the dashboard's banners), and another site's does not.
    site = (await client.get("/v1/sites/current", headers=admin)).json()
    assert site["paused_until"] is None
    assert at(site["rain_delay_until"]) == at(rain)
    other_site = (await client.get("/v1/sites/current", headers=other_admin)).json()
    assert other_site["rain_delay_until"] is None

    ended = await client.delete("/v1/sites/current/rain-delay", headers=admin)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"paused_until": None, "rain_delay_until": None}
    site = (await client.get("/v1/sites/current", headers=admin)).json()
    assert (site["paused_until"], site["rain_delay_until"]) == (None, None)


@pytest.mark.parametrize("path", ["/v1/sites/current/rain-delay", "/v1/sites/current/pause"])
async def test_site_state_needs_a_future_aware_time_and_control(
    client: httpx.AsyncClient, admin: Headers, reader: Headers, path: str
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    naive = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert_invalid(await client.post(path, json={"until": past}, headers=admin), "body.until")
    assert_invalid(await client.post(path, json={"until": naive}, headers=admin), "body.until")
    assert_invalid(await client.post(path, json={}, headers=admin), "body.until")
    future = {"until": iso_in(timedelta(hours=1))}
    assert_problem(await client.post(path, json=future, headers=reader), 403, "insufficient_scope")
    assert_problem(await client.delete(path, headers=reader), 403, "insufficient_scope")
    state = await client.delete(path, headers=admin)
    assert state.json() == {"paused_until": None, "rain_delay_until": None}


@pytest.mark.parametrize(
    "target", ["/v1/sites/current/rain-delay", "/v1/sites/current/pause", "zone"]
)
async def test_until_more_than_366_days_ahead_is_until_too_far(
    client: httpx.AsyncClient, admin: Headers, target: str
) -> None:
    zone = await make_zone(client, admin)
    path = f"/v1/zones/{zone['id']}/rain-delay" if target == "zone" else target
    for until in ("9999-12-31T23:00:00Z", iso_in(timedelta(days=367))):
        refused = await client.post(path, json={"until": until}, headers=admin)
        body = assert_invalid(refused, "body.until", code="until_too_far")
        assert "366 days" in body["detail"]
    shown = (await client.get(f"/v1/zones/{zone['id']}", headers=admin)).json()
    state = await client.delete("/v1/sites/current/pause", headers=admin)
    assert shown["rain_delay_until"] is None
    assert state.json() == {"paused_until": None, "rain_delay_until": None}
    # A season ahead is still fine.
    accepted = await client.post(path, json={"until": iso_in(timedelta(days=365))}, headers=admin)
    assert accepted.status_code == 200, accepted.text


# Queued activations and the run queue --------------------------------------------------


async def busy_pump(client: httpx.AsyncClient, admin: Headers) -> dict[str, Any]:
    """A pump whose manual run was admitted; no worker runs, so it stays queued and busy."""
    pump = await make_pump(client, admin, "hw-busy")
    first = await activate(client, admin, pump["id"], 5)
    assert first.status_code == 202, first.text
    assert first.json()["kind"] == "activation"
    assert first.headers["location"] == f"/v1/activations/{first.json()['id']}"
    return pump


async def test_queued_request_for_a_busy_pump_waits_and_is_explained(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await busy_pump(client, admin)

    refused = await activate(client, admin, pump["id"], 5)
    assert_problem(refused, 409, "pump_busy")

    response = await activate(client, admin, pump["id"], 5, queue="append", reason="top up")
    assert response.status_code == 202, response.text
    request = response.json()
    assert request["kind"] == "run_request"
    assert request["status"] == "waiting"
    assert request["last_reason"] == "pump_busy"
    assert request["queue"] == "append"
    assert request["priority"] == "manual"
    assert request["pump_id"] == pump["id"]
    assert request["zone_id"] == pump["zone_id"]
    assert request["activation_id"] is None
    assert request["resolved_at"] is None
    assert response.headers["location"] == f"/v1/run-queue/{request['id']}"
    deadline = at(request["deadline"])
    assert deadline is not None
    assert deadline > datetime.now(UTC)

    one = await client.get(response.headers["location"], headers=admin)
    assert one.status_code == 200, one.text
    assert one.json() == request

    waiting = await client.get("/v1/run-queue", params={"status": "waiting"}, headers=admin)
    assert [r["id"] for r in waiting.json()["items"]] == [request["id"]]
    by_pump = await client.get("/v1/run-queue", params={"pump_id": pump["id"]}, headers=admin)
    assert [r["id"] for r in by_pump.json()["items"]] == [request["id"]]
    started = await client.get("/v1/run-queue", params={"status": "started"}, headers=admin)
    assert started.json()["items"] == []
    other_zone = await client.get(
        "/v1/run-queue", params={"zone_id": str(uuid.uuid4())}, headers=admin
    )
    assert other_zone.json()["items"] == []

    decisions_path = f"/v1/zones/{pump['zone_id']}/decisions"
    logged = (await client.get(decisions_path, headers=admin)).json()["items"]
    assert len(logged) == 1
    decision = logged[0]
    assert decision["outcome"] == "deferred"
    assert decision["reason"] == "pump_busy"
    assert decision["run_request_id"] == request["id"]
    assert decision["pump_id"] == pump["id"]
    assert decision["zone_id"] == pump["zone_id"]
    assert decision["message"].startswith("deferred: ")
    deferred = await client.get(decisions_path, params={"outcome": "deferred"}, headers=admin)
    assert [d["id"] for d in deferred.json()["items"]] == [decision["id"]]
    by_reason = await client.get(decisions_path, params={"reason": "pump_busy"}, headers=admin)
    assert [d["id"] for d in by_reason.json()["items"]] == [decision["id"]]
    started_only = await client.get(decisions_path, params={"outcome": "started"}, headers=admin)
    assert started_only.status_code == 200, started_only.text
    assert started_only.json()["items"] == []
    bad_outcome = await client.get(decisions_path, params={"outcome": "maybe"}, headers=admin)
    assert_invalid(bad_outcome, "query.outcome")


async def test_cancelling_a_waiting_request(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, reader: Headers
) -> None:
    pump = await busy_pump(client, admin)
    request = (await activate(client, admin, pump["id"], 5, queue="append")).json()
    path = f"/v1/run-queue/{request['id']}"

    assert_problem(await client.delete(path, headers=reader), 403, "insufficient_scope")
    assert_problem(await client.delete(path, headers=other_admin), 404, "not_found")
    assert_problem(await client.get(path, headers=other_admin), 404, "not_found")
    assert (await client.get("/v1/run-queue", headers=other_admin)).json()["items"] == []

    cancelled = await client.delete(path, headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["last_reason"] == "cancelled"
    assert cancelled.json()["resolved_at"] is not None
    assert (await client.get(path, headers=reader)).json()["status"] == "cancelled"
    waiting = await client.get("/v1/run-queue", params={"status": "waiting"}, headers=admin)
    assert waiting.json()["items"] == []

    again = await client.delete(path, headers=admin)
    assert again.status_code == 200, again.text
    assert again.json() == cancelled.json()
    assert_problem(
        await client.delete(f"/v1/run-queue/{uuid.uuid4()}", headers=admin), 404, "not_found"
    )


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"queue": "append", "deadline": "2020-01-01T00:00:00+00:00"}, "body.deadline"),
        ({"queue": "append", "deadline": "2999-01-01T00:00:00"}, "body.deadline"),
        ({"queue": "append", "deadline": "2999-01-01T00:00:00+00:00"}, "body.deadline"),
        ({"queue": "later"}, "body.queue"),
        ({"queue": "APPEND"}, "body.queue"),
        ({"queue": ""}, "body.queue"),
    ],
)
async def test_invalid_queue_or_deadline_is_422_and_queues_nothing(
    client: httpx.AsyncClient, admin: Headers, extra: dict[str, Any], path: str
) -> None:
    pump = await busy_pump(client, admin)
    response = await activate(client, admin, pump["id"], 5, **extra)
    assert_invalid(response, path)
    assert (await client.get("/v1/run-queue", headers=admin)).json()["items"] == []


async def test_queued_request_with_a_future_deadline_keeps_it(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await busy_pump(client, admin)
    deadline = iso_in(timedelta(minutes=30))
    response = await activate(client, admin, pump["id"], 5, queue="front", deadline=deadline)
    assert response.status_code == 202, response.text
    assert at(response.json()["deadline"]) == at(deadline)
    assert response.json()["queue"] == "front"


async def test_idempotency_key_replays_a_queued_request(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await busy_pump(client, admin)
    first = await activate(client, admin, pump["id"], 5, queue="append", idempotency_key="q-1")
    again = await activate(client, admin, pump["id"], 5, queue="append", idempotency_key="q-1")
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["kind"] == "run_request"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    listed = (await client.get("/v1/run-queue", headers=admin)).json()["items"]
    assert [r["id"] for r in listed] == [first.json()["id"]]

    other_body = await activate(client, admin, pump["id"], 5, queue="front", idempotency_key="q-1")
    assert_problem(other_body, 422, "idempotency_key_reused")
    fresh = await activate(client, admin, pump["id"], 5, queue="append", idempotency_key="q-2")
    assert fresh.status_code == 202, fresh.text
    assert fresh.json()["id"] != first.json()["id"]


async def test_queue_on_a_free_pump_starts_at_once(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    pump = await make_pump(client, admin, "hw-free")
    response = await activate(client, admin, pump["id"], 5, queue="append")
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "run_request"
    assert response.json()["status"] == "started"
    activation_id = response.json()["activation_id"]
    assert activation_id
    activation = await client.get(f"/v1/activations/{activation_id}", headers=admin)
    assert activation.status_code == 200, activation.text
    started = await client.get(
        f"/v1/zones/{pump['zone_id']}/decisions", params={"outcome": "started"}, headers=admin
    )
    assert [d["activation_id"] for d in started.json()["items"]] == [activation_id]


async def test_queued_request_for_another_sites_pump_is_404(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    theirs = await make_pump(client, other_admin, "hw-theirs")
    response = await activate(client, admin, theirs["id"], 5, queue="append")
    assert_problem(response, 404, "not_found")
    assert (await client.get("/v1/run-queue", headers=other_admin)).json()["items"] == []


# Decisions -----------------------------------------------------------------------------


async def test_decisions_of_another_sites_zone_are_404(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers, reader: Headers
) -> None:
    theirs = await make_zone(client, other_admin)
    assert_problem(
        await client.get(f"/v1/zones/{theirs['id']}/decisions", headers=admin), 404, "not_found"
    )
    assert_problem(
        await client.get(f"/v1/zones/{uuid.uuid4()}/decisions", headers=admin), 404, "not_found"
    )
    mine = await make_zone(client, admin)
    empty = await client.get(f"/v1/zones/{mine['id']}/decisions", headers=reader)
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"items": [], "next_cursor": None}


async def test_decisions_page_newest_first(client: httpx.AsyncClient, admin: Headers) -> None:
    pump = await busy_pump(client, admin)
    older = (await activate(client, admin, pump["id"], 5, queue="append")).json()
    assert (await client.delete(f"/v1/run-queue/{older['id']}", headers=admin)).status_code == 200
    newer = (await activate(client, admin, pump["id"], 5, queue="append")).json()
    assert newer["last_reason"] == "pump_busy"

    path = f"/v1/zones/{pump['zone_id']}/decisions"
    first = await client.get(path, params={"limit": 1}, headers=admin)
    assert first.status_code == 200, first.text
    assert [d["run_request_id"] for d in first.json()["items"]] == [newer["id"]]
    cursor = first.json()["next_cursor"]
    assert cursor
    second = await client.get(path, params={"limit": 1, "cursor": cursor}, headers=admin)
    assert second.status_code == 200, second.text
    assert [d["run_request_id"] for d in second.json()["items"]] == [older["id"]]
    rest = second.json()["next_cursor"]
    if rest is not None:
        third = await client.get(path, params={"limit": 1, "cursor": rest}, headers=admin)
        assert third.json() == {"items": [], "next_cursor": None}
    since = at(first.json()["items"][0]["at"])
    assert since is not None
    recent = await client.get(path, params={"since": since.isoformat()}, headers=admin)
    assert [d["run_request_id"] for d in recent.json()["items"]] == [newer["id"]]
    assert_invalid(await client.get(path, params={"limit": 0}, headers=admin), "query.limit")
