"""Aggregates, checked exactly against values computed here from the inserted readings:
hourly and daily buckets in the zone's time zone (DST days of 23 and 25 hours, a
half-hour zone), partial edge buckets, late and duplicate readings, fill=null, zone
series (combined as a true average, or per sensor), and the requests refused."""

import itertools
import random
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.readings.helpers import (
    Reading,
    aggregates,
    assert_points,
    by_instant,
    expected_points,
    ingest,
)
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone
from tests.support.problems import assert_invalid, assert_problem

INDIA = timezone(timedelta(hours=5, minutes=30))


def spaced(
    sensor_id: str, first: datetime, last: datetime, step: timedelta, seed: int
) -> list[Reading]:
    """One reading per step from `first` to before `last`, a value from a seeded RNG."""
    rng = random.Random(seed)
    out: list[Reading] = []
    ts = first.astimezone(UTC)  # arithmetic in UTC: in a zone it is wall-clock arithmetic
    while ts < last:
        out.append(Reading(sensor_id, ts, round(rng.uniform(5, 95), 3)))
        ts += step
    return out


def hour_now() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def test_hour_and_day_points_match_the_readings_including_late_and_duplicates(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    rng = random.Random(7)
    first = hour_now() - timedelta(days=4, minutes=23)
    readings: list[Reading] = []
    ts = first
    while ts < hour_now() - timedelta(hours=2):
        readings.append(Reading(sensor, ts, round(rng.uniform(0, 100), 2)))
        ts += timedelta(seconds=rng.randint(60, 1500))
    late = readings[::9]  # every 9th reading arrives after the rest, into built rollups
    on_time = [r for r in readings if r not in late]
    await ingest(client, admin, on_time)
    await ingest(client, admin, late)
    # Re-sent readings (some with another value) are duplicates: the first value stays.
    resent = [Reading(r.sensor_id, r.ts, 50.0 if i % 2 else r.value) for i, r in enumerate(late)]
    body = await ingest(client, admin, resent, inserted=0)
    assert body["duplicates"] == len(resent)

    start = first + timedelta(hours=3, minutes=17, seconds=13)  # a partial first hour/day
    end = hour_now() - timedelta(hours=9, minutes=41)  # a partial last hour/day
    path = f"/v1/sensors/{sensor}/aggregates"
    for bucket in ("hour", "day"):
        got = await aggregates(client, admin, path, bucket=bucket, start=start, end=end)
        assert set(got) == {"sensor_id", "bucket", "timezone", "points"}
        assert (got["sensor_id"], got["bucket"], got["timezone"]) == (
            sensor,
            bucket,
            "Europe/Berlin",
        )
        assert_points(got["points"], expected_points(readings, "Europe/Berlin", bucket, start, end))


async def test_edge_buckets_count_only_the_readings_inside_the_range(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = (await make_zone(client, admin, timezone="America/New_York"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    base = hour_now() - timedelta(days=3)
    readings = spaced(sensor, base, base + timedelta(hours=30), timedelta(minutes=5), seed=1)
    await ingest(client, admin, readings)
    path = f"/v1/sensors/{sensor}/aggregates"
    cases = [
        (base + timedelta(minutes=12), base + timedelta(hours=5, minutes=31)),  # both edges
        (base + timedelta(minutes=12), base + timedelta(minutes=48)),  # inside one hour
        (base + timedelta(minutes=40), base + timedelta(hours=1, minutes=20)),  # two halves
        (base + timedelta(hours=1), base + timedelta(hours=2)),  # one whole hour
        # Bounds written with a half-hour offset: 10:00+05:30 is half past a UTC hour.
        (
            (base + timedelta(hours=2, minutes=30)).astimezone(INDIA),
            (base + timedelta(hours=20, minutes=30)).astimezone(INDIA),
        ),
    ]
    for start, end in cases:
        for bucket in ("hour", "day"):
            got = await aggregates(client, admin, path, bucket=bucket, start=start, end=end)
            want = expected_points(readings, "America/New_York", bucket, start, end)
            assert_points(got["points"], want)
    # The edge bucket of a day starts at local midnight, before the range does (a range of
    # two hours that does not cross a local midnight, whatever the time the test runs at).
    start = base + timedelta(hours=7, minutes=3)
    while not 1 <= start.astimezone(ZoneInfo("America/New_York")).hour < 21:
        start += timedelta(hours=3)
    got = await aggregates(
        client, admin, path, bucket="day", start=start, end=start + timedelta(hours=2)
    )
    (point,) = got["points"]
    local = start.astimezone(ZoneInfo("America/New_York"))
    assert point["start"] == local.replace(hour=0, minute=0, second=0).isoformat()
    assert point["count"] == 24


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Berlin", date(2026, 3, 29), 23),
        ("Europe/Berlin", date(2026, 10, 25), 25),
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
    ],
)
async def test_dst_days_have_23_or_25_hour_buckets_and_one_day_bucket(
    client: httpx.AsyncClient, admin: Headers, tz: str, day: date, hours: int
) -> None:
    zone_info = ZoneInfo(tz)
    zone = (await make_zone(client, admin, timezone=tz))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    # In UTC: an aware datetime of a zone adds and subtracts wall-clock time.
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone_info).astimezone(UTC)
    following = day + timedelta(days=1)
    next_midnight = datetime(following.year, following.month, following.day, tzinfo=zone_info)
    next_midnight = next_midnight.astimezone(UTC)
    readings = spaced(
        sensor,
        midnight - timedelta(hours=10),
        next_midnight + timedelta(hours=10),
        timedelta(minutes=7),
        seed=day.toordinal(),
    )
    await ingest(client, admin, readings)
    path = f"/v1/sensors/{sensor}/aggregates"
    assert next_midnight - midnight == timedelta(hours=hours)

    got = await aggregates(
        client, admin, path, bucket="hour", start=midnight, end=next_midnight, fill="null"
    )
    assert len(got["points"]) == hours
    assert_points(got["points"], expected_points(readings, tz, "hour", midnight, next_midnight))
    starts = [datetime.fromisoformat(p["start"]) for p in got["points"]]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(starts))
    local_hours = [s.hour for s in starts]
    if hours == 23:  # the skipped hour is missing, the next one starts an hour later
        assert local_hours == [h for h in range(24) if h != 2]
    else:  # the repeated hour comes twice, with the summer then the winter offset
        repeated = 2 if tz == "Europe/Berlin" else 1
        assert local_hours == sorted([*range(24), repeated])
        twice = [s for s in starts if s.hour == repeated]
        assert twice[0].utcoffset() == twice[1].utcoffset() + timedelta(hours=1)

    # Hour buckets across the transition, from partial edges; the day and its neighbours.
    start = midnight - timedelta(hours=3, minutes=25)
    end = next_midnight - timedelta(hours=19, minutes=5)
    got = await aggregates(client, admin, path, bucket="hour", start=start, end=end)
    assert_points(got["points"], expected_points(readings, tz, "hour", start, end))
    start, end = midnight - timedelta(hours=10), next_midnight + timedelta(hours=10)
    got = await aggregates(client, admin, path, bucket="day", start=start, end=end)
    assert_points(got["points"], expected_points(readings, tz, "day", start, end))
    assert len(got["points"]) == 3
    assert got["points"][1]["start"] == midnight.astimezone(zone_info).isoformat()
    assert got["points"][1]["count"] == sum(1 for r in readings if midnight <= r.ts < next_midnight)


async def test_half_hour_zone_buckets_are_its_own_whole_hours_and_days(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    tz = "Asia/Kolkata"
    zone = (await make_zone(client, admin, timezone=tz))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    base = hour_now() - timedelta(days=3)
    readings = spaced(sensor, base, base + timedelta(hours=50), timedelta(minutes=11), seed=3)
    await ingest(client, admin, readings)
    path = f"/v1/sensors/{sensor}/aggregates"
    kolkata = ZoneInfo(tz)
    # Bounds written in the zone's own offset, on its whole hours (half past, in UTC).
    local_start = (base + timedelta(hours=2)).astimezone(kolkata).replace(minute=0)
    cases = [
        (local_start, local_start + timedelta(hours=20)),
        (local_start + timedelta(minutes=20), local_start + timedelta(hours=45, minutes=10)),
        (base, base + timedelta(hours=50)),
    ]
    for start, end in cases:
        for bucket in ("hour", "day"):
            got = await aggregates(client, admin, path, bucket=bucket, start=start, end=end)
            assert_points(got["points"], expected_points(readings, tz, bucket, start, end))
            for p in got["points"]:
                moment = datetime.fromisoformat(p["start"])
                assert moment.utcoffset() == timedelta(hours=5, minutes=30)
                assert moment.minute == 0
                assert moment.astimezone(UTC).minute == 30


async def test_empty_range_has_no_points_or_only_nulls_with_fill(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    start = hour_now() - timedelta(days=2)
    end = start + timedelta(hours=6)
    path = f"/v1/sensors/{sensor}/aggregates"
    assert (await aggregates(client, admin, path, start=start, end=end))["points"] == []
    filled = await aggregates(client, admin, path, start=start, end=end, fill="null")
    assert [p["count"] for p in filled["points"]] == [0] * 6
    assert {(p["avg"], p["min"], p["max"]) for p in filled["points"]} == {(None, None, None)}


async def test_fill_null_returns_every_bucket_with_nulls_where_nothing_was_read(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    tz = "Europe/Berlin"
    zone = (await make_zone(client, admin, timezone=tz))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    base = hour_now() - timedelta(days=2)
    # Readings in hours 1, 2 and 5 only.
    readings = [
        Reading(sensor, base + timedelta(hours=h, minutes=m), float(h * 5 + m))
        for h in (1, 2, 5)
        for m in (3, 29, 51)
    ]
    await ingest(client, admin, readings)
    start, end = base + timedelta(minutes=30), base + timedelta(hours=7, minutes=10)
    path = f"/v1/sensors/{sensor}/aggregates"
    got = await aggregates(client, admin, path, bucket="hour", start=start, end=end, fill="null")
    points = by_instant(got["points"])
    assert list(points) == [base + timedelta(hours=h) for h in range(8)]
    want = expected_points(readings, tz, "hour", start, end)
    assert_points([p for p in got["points"] if p["count"]], want)
    for moment, p in points.items():
        if moment not in want:
            assert (p["avg"], p["min"], p["max"], p["count"]) == (None, None, None, 0)
    got = await aggregates(
        client,
        admin,
        path,
        bucket="day",
        start=base - timedelta(days=2),
        end=base + timedelta(hours=7),
        fill="null",
    )
    first_day = (base - timedelta(days=2)).astimezone(ZoneInfo(tz)).date()
    last_day = (base + timedelta(hours=7) - timedelta(microseconds=1)).astimezone(ZoneInfo(tz))
    assert len(got["points"]) == (last_day.date() - first_day).days + 1
    assert sum(p["count"] for p in got["points"]) == len(readings)


async def test_zone_average_weighs_every_reading_and_per_sensor_gives_each_series(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    tz = "Europe/Berlin"
    zone = (await make_zone(client, admin, timezone=tz))["id"]
    busy = (await make_sensor(client, admin, zone))["id"]
    quiet = (await make_sensor(client, admin, zone))["id"]
    thermometer = (await make_sensor(client, admin, zone, kind="temperature", unit="°C"))["id"]
    other_zone = (await make_zone(client, admin, timezone=tz))["id"]
    elsewhere = (await make_sensor(client, admin, other_zone))["id"]
    base = hour_now() - timedelta(days=1)
    readings = [Reading(busy, base + timedelta(minutes=3 * i), 10.0) for i in range(40)]
    readings += [Reading(quiet, base + timedelta(minutes=50 * i + 1), 40.0) for i in range(3)]
    others = [Reading(s, base + timedelta(minutes=5), 99.0) for s in (thermometer, elsewhere)]
    await ingest(client, admin, readings + others)
    start, end = base, base + timedelta(hours=3)
    path = f"/v1/zones/{zone}/aggregates"

    got = await aggregates(client, admin, path, kind="soil_moisture", start=start, end=end)
    assert sorted(got["sensor_ids"]) == sorted([busy, quiet])
    assert got["series"] is None
    assert_points(got["points"], expected_points(readings, tz, "hour", start, end))
    first = got["points"][0]  # 20 readings of 10 and 2 of 40: 12.7..., not (10 + 40) / 2
    assert first["count"] == 22
    assert abs(first["avg"] - (20 * 10 + 2 * 40) / 22) < 1e-9

    got = await aggregates(client, admin, path, start=start, end=end, per_sensor="true")
    assert got["points"] is None
    series = {s["sensor_id"]: s["points"] for s in got["series"]}
    assert set(series) == {busy, quiet}
    for sensor, points in series.items():
        mine = [r for r in readings if r.sensor_id == sensor]
        assert_points(points, expected_points(mine, tz, "hour", start, end))

    got = await aggregates(
        client, admin, path, bucket="day", start=start, end=end, per_sensor="true", fill="null"
    )
    assert all(len(s["points"]) == len(got["series"][0]["points"]) for s in got["series"])
    got = await aggregates(client, admin, path, kind="temperature", start=start, end=end)
    assert got["sensor_ids"] == [thermometer]
    assert [(p["count"], p["avg"]) for p in got["points"]] == [(1, 99.0)]
    got = await aggregates(client, admin, path, kind="flow", start=start, end=end)
    assert (got["sensor_ids"], got["points"]) == ([], [])


async def test_bad_ranges_are_refused_with_422(client: httpx.AsyncClient, admin: Headers) -> None:
    zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    now = hour_now()
    paths = [f"/v1/sensors/{sensor}/aggregates", f"/v1/zones/{zone}/aggregates"]
    for path in paths:

        async def get(path: str = path, **params: str) -> httpx.Response:
            return await client.get(path, params=params, headers=admin)

        iso = now.isoformat()
        assert_invalid(await get(start=iso, end=iso), "query.start")
        assert_invalid(await get(start=iso, end=(now - timedelta(hours=1)).isoformat()))
        assert_invalid(await get(start="2026-11-01T00:00:00", end=iso), "query.start")
        assert_invalid(
            await get(start=(now - timedelta(days=1)).isoformat(), end="2026-11-23T00:00:00"),
            "query.end",
        )
        assert_invalid(await get(start="0001-01-01T00:00:00+05:00", end=iso), "query.start")
        assert_invalid(await get(start="1850-01-01T00:00:00Z", end=iso), "query.start")
        assert_invalid(await get(bucket="week"), "query.bucket")
        assert_invalid(await get(fill="zero"), "query.fill")
        too_many = {
            "hour": now - timedelta(hours=10_001),
            "day": now - timedelta(days=10_001),
        }
        for bucket, start in too_many.items():
            response = await get(bucket=bucket, start=start.isoformat(), end=iso)
            assert_invalid(response, "query.start", code="too_many_buckets")
        # Exactly 10,000 buckets is allowed.
        response = await get(
            bucket="hour", start=(now - timedelta(hours=10_000)).isoformat(), end=iso
        )
        assert response.status_code == 200, response.text
        start = datetime.combine(
            now.astimezone(ZoneInfo("Europe/Berlin")).date() - timedelta(days=9_999),
            datetime.min.time(),
            ZoneInfo("Europe/Berlin"),
        )
        response = await get(bucket="day", start=start.isoformat(), end=iso)
        assert response.status_code == 200, response.text


async def test_another_sites_sensor_and_zone_are_404(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    zone = (await make_zone(client, other_admin, timezone="Europe/Berlin"))["id"]
    sensor = (await make_sensor(client, other_admin, zone))["id"]
    for path in (
        f"/v1/sensors/{sensor}/aggregates",
        f"/v1/zones/{zone}/aggregates",
        f"/v1/sensors/{sensor}/readings",
    ):
        assert_problem(await client.get(path, headers=admin), 404, "not_found")
        assert (await client.get(path, headers=other_admin)).status_code == 200
    csv = await client.get(
        f"/v1/sensors/{sensor}/readings", headers={**admin, "Accept": "text/csv"}
    )
    assert_problem(csv, 404, "not_found")
