"""Calibration backfills: a chosen period's stored values derived again from their raw values
with the calibrations in effect, the hourly (and so daily) aggregates following, run by the
real job function; idempotent, one at a time per sensor, bounded."""

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from irrigation.readings import backfill
from irrigation.settings import Settings
from tests.calibration.helpers import (
    calibrate,
    hour_ago,
    item,
    request_backfill,
    run_backfill,
    stored,
)
from tests.ingest.helpers import rollups, send
from tests.readings.helpers import Reading, assert_points, expected_points
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone
from tests.support.problems import assert_invalid, assert_problem

RAWS = (10.0, 20.0, 30.0)


async def _history(
    client: httpx.AsyncClient, headers: Headers, sensor: str, start: datetime, hours: int
) -> list[datetime]:
    """Three readings (RAWS) in each of `hours` hours from `start`, stored uncalibrated."""
    moments = [
        start + timedelta(hours=h, minutes=10 + 20 * k) for h in range(hours) for k in range(3)
    ]
    items = [item(sensor, ts, RAWS[k % 3]) for k, ts in enumerate(moments)]
    assert (await send(client, headers, items))["inserted"] == len(items)
    return moments


async def _aggregates(
    client: httpx.AsyncClient,
    headers: Headers,
    sensor: str,
    bucket: str,
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/sensors/{sensor}/aggregates",
        params={"bucket": bucket, "start": start.isoformat(), "end": end.isoformat()},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    points: list[dict[str, Any]] = response.json()["points"]
    return points


async def test_a_backfill_derives_a_chosen_period_again_and_the_aggregates_follow(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    zone = await make_zone(client, admin, timezone="UTC")
    sensor = (await make_sensor(client, admin, zone["id"]))["id"]
    t0 = hour_ago(8)
    moments = await _history(client, admin, sensor, t0, 6)
    # In effect from the middle of the second hour; made after the readings were stored.
    await calibrate(
        client, admin, sensor, effective_from=t0 + timedelta(minutes=90), gain=2, offset=1
    )
    everything = (t0, t0 + timedelta(hours=6))
    assert await stored(client, admin, sensor, *everything) == {
        ts: (RAWS[k % 3], RAWS[k % 3]) for k, ts in enumerate(moments)
    }

    start, end = t0 + timedelta(minutes=140), t0 + timedelta(minutes=280)
    answer = await request_backfill(client, admin, sensor, start, end)
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert answer.headers["location"] == (
        f"/v1/sensors/{sensor}/calibrations/backfills/{queued['id']}"
    )
    assert (queued["status"], queued["from"], queued["to"]) == (
        "queued",
        start.isoformat().replace("+00:00", "Z"),
        end.isoformat().replace("+00:00", "Z"),
    )
    assert await run_backfill(settings, queued["id"]) == "completed"

    def expected(ts: datetime, raw: float) -> tuple[float, float]:
        inside = start <= ts < end and ts >= t0 + timedelta(minutes=90)
        return (2 * raw + 1 if inside else raw, raw)

    now_stored = await stored(client, admin, sensor, *everything)
    assert now_stored == {ts: expected(ts, RAWS[k % 3]) for k, ts in enumerate(moments)}
    changed = sum(1 for ts in moments if start <= ts < end)
    assert changed == 7  # the period cuts through its first and last hour

    done = (await client.get(answer.headers["location"], headers=admin)).json()
    assert (done["status"], done["readings_updated"], done["done_until"]) == (
        "completed",
        changed,
        queued["to"],
    )
    assert done["hours_rolled_up"] == 3

    # Hour and day aggregates (from the rollups) say what the readings now say.
    readings = [Reading(sensor, ts, value) for ts, (value, _) in now_stored.items()]
    for bucket in ("hour", "day"):
        points = await _aggregates(client, admin, sensor, bucket, *everything)
        assert_points(points, expected_points(readings, "UTC", bucket, *everything))
    # The hot cache holds the values as now stored.
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert latest["source"] == "cache"
    newest_first = sorted(now_stored.items(), reverse=True)
    assert [r["value"] for r in latest["recent"]] == [value for _, (value, _) in newest_first]


async def test_a_backfill_is_idempotent(
    client: httpx.AsyncClient, admin: Headers, settings: Settings, database_url: str
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    t0 = hour_ago(5)
    moments = await _history(client, admin, sensor, t0, 3)
    await calibrate(client, admin, sensor, effective_from=t0 - timedelta(days=1), gain=0.5)
    period = (t0, t0 + timedelta(hours=3))
    first = (await request_backfill(client, admin, sensor, *period)).json()
    assert await run_backfill(settings, first["id"]) == "completed"
    values = await stored(client, admin, sensor, *period)
    totals = await rollups(database_url, sensor)

    # The job delivered again, and a second backfill of the same period: nothing changes.
    assert await run_backfill(settings, first["id"]) == "skipped: completed"
    second = (await request_backfill(client, admin, sensor, *period)).json()
    assert await run_backfill(settings, second["id"]) == "completed"
    done = (
        await client.get(
            f"/v1/sensors/{sensor}/calibrations/backfills/{second['id']}", headers=admin
        )
    ).json()
    assert (done["readings_updated"], done["hours_rolled_up"]) == (0, 0)
    assert await stored(client, admin, sensor, *period) == values
    assert await rollups(database_url, sensor) == totals
    assert sorted(v for v, _ in values.values()) == sorted(
        0.5 * RAWS[k % 3] for k in range(len(moments))
    )


async def test_one_unfinished_backfill_per_sensor_and_a_key_replays_the_first_answer(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    period = (hour_ago(3), hour_ago(1))
    key = {"Idempotency-Key": "backfill-1"}
    first = await request_backfill(client, admin, sensor, *period, **key)
    assert first.status_code == 202, first.text
    replay = await request_backfill(client, admin, sensor, *period, **key)
    assert (replay.status_code, replay.json()) == (202, first.json())
    assert replay.headers["location"] == first.headers["location"]

    second = await request_backfill(client, admin, sensor, *period)
    problem = assert_problem(second, 409, "backfill_in_progress")
    assert problem["backfill_id"] == first.json()["id"]

    assert await run_backfill(settings, first.json()["id"]) == "completed"
    assert (await request_backfill(client, admin, sensor, *period)).status_code == 202


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "body.from", None),
        ({"from": "2099-01-01T00:00:00Z", "to": "2099-02-01T00:00:00Z"}, "body.from", None),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "body.to", None),
        (
            {"from": "2001-01-01T00:00:00Z", "to": "2001-02-01T00:00:00Z"},
            "body.from",
            "beyond_raw_retention",
        ),
        ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}, "body.from", None),
        ({"start": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}, "body.from", None),
        ({"from": "yesterday", "to": "2026-01-02T00:00:00Z"}, "body.from", None),
    ],
)
async def test_bad_backfills_are_422_problems(
    client: httpx.AsyncClient,
    admin: Headers,
    body: dict[str, Any],
    path: str,
    code: str | None,
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    response = await client.post(
        f"/v1/sensors/{sensor}/calibrations/backfill", json=body, headers=admin
    )
    assert_invalid(response, path, code=code or "validation_error")


async def test_a_backfill_beside_live_batches_leaves_exact_rollups(
    client: httpx.AsyncClient,
    admin: Headers,
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live batches into the hours a backfill rebuilds, at the same time: every rollup still
    counts exactly the readings stored (none lost to the rebuild, none twice)."""
    monkeypatch.setattr(backfill, "FIRST_WINDOW", timedelta(hours=1))
    monkeypatch.setattr(backfill, "CHUNK_READINGS", 1)  # so every chunk is one hour
    sensor = (await make_sensor(client, admin))["id"]
    t0 = hour_ago(10)
    await _history(client, admin, sensor, t0, 8)
    await calibrate(client, admin, sensor, effective_from=t0 - timedelta(days=1), gain=3)
    queued = (await request_backfill(client, admin, sensor, t0, t0 + timedelta(hours=8))).json()

    async def live() -> None:
        for second in range(1, 41):
            ts = [t0 + timedelta(hours=h, seconds=second) for h in range(8)]
            await send(client, admin, [item(sensor, moment, 5.0) for moment in ts])

    outcome, _ = await asyncio.gather(run_backfill(settings, queued["id"]), live())
    assert outcome == "completed"

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT date_trunc('hour', ts, 'UTC') AS bucket, count(*), sum(value), min(value),"
            " max(value) FROM sensor_readings WHERE sensor_id = $1 GROUP BY 1 ORDER BY 1",
            uuid.UUID(sensor),
        )
    finally:
        await conn.close()
    from_readings = {r["bucket"]: (r["count"], r["sum"], r["min"], r["max"]) for r in rows}
    kept = await rollups(database_url, sensor)
    assert list(kept) == list(from_readings)
    for bucket, (count, total, low, high) in from_readings.items():
        assert count == 3 + 40, bucket
        got = kept[bucket]
        assert (got[0], got[2], got[3]) == (count, low, high), bucket
        assert got[1] == pytest.approx(total, rel=1e-12), bucket
    # Every reading of the period carries the calibration now, the live ones too.
    values = await stored(client, admin, sensor, t0, t0 + timedelta(hours=8))
    assert all(value == 3 * raw for value, raw in values.values())
