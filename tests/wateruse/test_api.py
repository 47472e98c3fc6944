"""GET .../water-use: JSON and CSV, day and month buckets, the period's defaults and bounds
(422), and another site's objects (404) and water (never counted)."""

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from irrigation.common.clock import utcnow
from irrigation.db import create_engine, create_sessionmaker
from irrigation.settings import Settings
from tests.support.api import Headers
from tests.support.factories import make_pump, make_water_source, make_zone
from tests.support.problems import assert_problem
from tests.wateruse.helpers import Sessions, ended_run, roll_up, site_id, water_use


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[Sessions]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def _pump_with_runs(
    client: httpx.AsyncClient, headers: Headers, sessions: Sessions, settings: Settings
) -> dict[str, str]:
    """A UTC zone's pump of 10 L/min that ran 5 minutes on 2026-09-30, 10 on 2026-10-01 and
    15 on 2026-11-15."""
    site = await site_id(client, headers)
    zone = await make_zone(client, headers, timezone="UTC")
    source = await make_water_source(client, headers)
    pump = await make_pump(
        client, headers, zone_id=zone["id"], water_source_id=source["id"], nominal_flow_lpm=10
    )
    for start, minutes in (
        ("2026-09-30T12:00:00", 5),
        ("2026-10-01T12:00:00", 10),
        ("2026-11-15T12:00:00", 15),
    ):
        began = at(start)
        await ended_run(sessions, site, pump, began, began + timedelta(minutes=minutes))
    await roll_up(sessions, settings)
    return {"zone": zone["id"], "pump": pump["id"], "source": source["id"]}


async def test_day_buckets_as_json_and_as_csv(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    ids = await _pump_with_runs(client, admin, sessions, settings)
    path = f"/v1/zones/{ids['zone']}/water-use"
    params = {"bucket": "day", "from": "2026-09-29", "to": "2026-10-02"}

    body = (await client.get(path, params=params, headers=admin)).json()
    assert {k: body[k] for k in ("scope", "id", "bucket", "from", "to", "timezone")} == {
        "scope": "zone",
        "id": ids["zone"],
        "bucket": "day",
        "from": "2026-09-29",
        "to": "2026-10-02",
        "timezone": "UTC",
    }
    assert [(b["start"], b["litres"]) for b in body["buckets"]] == [
        ("2026-09-29", 0.0),
        ("2026-09-30", 50.0),
        ("2026-10-01", 100.0),
        ("2026-10-02", 0.0),
    ]
    assert (body["litres"], body["estimated_litres"], body["estimated"]) == (150.0, 150.0, True)

    answer = await client.get(path, params=params, headers={**admin, "Accept": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(rows[0]) == [
        "start",
        "litres",
        "measured_litres",
        "estimated_litres",
        "estimated",
        "runtime_without_flow_s",
    ]
    assert [(r["start"], float(r["litres"]), r["estimated"]) for r in rows] == [
        ("2026-09-29", 0.0, "false"),
        ("2026-09-30", 50.0, "true"),
        ("2026-10-01", 100.0, "true"),
        ("2026-10-02", 0.0, "false"),
    ]


async def test_month_buckets_sum_the_days_and_cut_the_edge_months_to_the_period(
    client: httpx.AsyncClient, admin: Headers, sessions: Sessions, settings: Settings
) -> None:
    ids = await _pump_with_runs(client, admin, sessions, settings)
    for path in (
        f"/v1/pumps/{ids['pump']}",
        f"/v1/water-sources/{ids['source']}",
        "/v1/sites/current",
    ):
        body = await water_use(
            client, admin, path, bucket="month", **{"from": "2026-09-01", "to": "2026-12-31"}
        )
        assert [(b["start"], b["litres"]) for b in body["buckets"]] == [
            ("2026-09-01", 50.0),
            ("2026-10-01", 100.0),
            ("2026-11-01", 150.0),
            ("2026-12-01", 0.0),
        ], path
        # From the 1st of October to the 14th of November: September and the 15th are out.
        body = await water_use(
            client, admin, path, bucket="month", **{"from": "2026-10-01", "to": "2026-11-14"}
        )
        assert [(b["start"], b["litres"]) for b in body["buckets"]] == [
            ("2026-10-01", 100.0),
            ("2026-11-01", 0.0),
        ], path


async def test_the_default_period_ends_today_in_the_zones_time_zone(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = await make_zone(client, admin, timezone="Pacific/Kiritimati")  # UTC+14
    today = utcnow().astimezone(ZoneInfo("Pacific/Kiritimati")).date()
    days = await water_use(client, admin, f"/v1/zones/{zone['id']}")
    assert (days["to"], days["from"]) == (str(today), str(today - timedelta(days=29)))
    assert len(days["buckets"]) == 30
    months = await water_use(client, admin, f"/v1/zones/{zone['id']}", bucket="month")
    assert len(months["buckets"]) == 12
    assert months["buckets"][-1]["start"] == str(date(today.year, today.month, 1))
    site = await water_use(client, admin, "/v1/sites/current")
    assert site["timezone"] is None
    assert site["to"] == str(utcnow().date())


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"bucket": "week"}, "validation_error"),
        ({"from": "2026-13-01"}, "validation_error"),
        ({"from": "2026-10-02", "to": "2026-10-01"}, "validation_error"),
        ({"from": "1899-12-31", "to": "1900-01-02"}, "validation_error"),
        ({"from": "2026-01-01", "to": "9999-12-31"}, "validation_error"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "too_many_buckets"),
        ({"bucket": "month", "from": "2016-01-01", "to": "2026-01-01"}, "too_many_buckets"),
    ],
)
async def test_a_bad_period_is_422(
    client: httpx.AsyncClient, admin: Headers, params: dict[str, str], code: str
) -> None:
    zone = await make_zone(client, admin)
    for path in (f"/v1/zones/{zone['id']}", "/v1/sites/current"):
        answer = await client.get(f"{path}/water-use", params=params, headers=admin)
        assert_problem(answer, 422, code)


async def test_the_longest_periods_are_answered(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = await make_zone(client, admin)
    path = f"/v1/zones/{zone['id']}"
    days = await water_use(client, admin, path, **{"from": "2024-01-01", "to": "2024-12-31"})
    assert len(days["buckets"]) == 366
    months = await water_use(
        client, admin, path, bucket="month", **{"from": "2016-01-31", "to": "2025-12-01"}
    )
    assert len(months["buckets"]) == 120


async def test_another_sites_objects_are_404_and_its_water_is_never_counted(
    client: httpx.AsyncClient,
    admin: Headers,
    other_admin: Headers,
    sessions: Sessions,
    settings: Settings,
) -> None:
    theirs = await _pump_with_runs(client, other_admin, sessions, settings)
    ours = await _pump_with_runs(client, admin, sessions, settings)
    params = {"from": "2026-09-01", "to": "2026-12-31", "bucket": "month"}
    for kind, path in (
        ("zone", "/v1/zones/{}"),
        ("pump", "/v1/pumps/{}"),
        ("source", "/v1/water-sources/{}"),
    ):
        answer = await client.get(
            f"{path.format(theirs[kind])}/water-use", params=params, headers=admin
        )
        problem = assert_problem(answer, 404, "not_found")
        assert theirs[kind] not in answer.text, problem
        mine = await water_use(client, admin, path.format(ours[kind]), **params)
        assert mine["litres"] == 300.0
    # Both sites ran the same: each sees its own 300 litres, not 600.
    for headers in (admin, other_admin):
        assert (await water_use(client, headers, "/v1/sites/current", **params))["litres"] == 300.0
