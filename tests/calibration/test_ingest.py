"""Calibration at ingestion: each reading gets the calibration of its own time, its value as
sent is kept, and everything downstream (range checks, rollups, aggregates, the hot cache,
quarantine review) sees the calibrated value."""

import json
from datetime import timedelta

import httpx
import pytest

from irrigation.ingest import import_jobs
from irrigation.settings import Settings
from tests.calibration.helpers import calibrate, hour_ago, item, job_context, stored
from tests.ingest.helpers import reasons, rollups, send
from tests.support.api import Headers
from tests.support.factories import make_sensor
from tests.support.problems import assert_problem


async def test_calibration_changes_the_calibrated_value_from_its_time_only(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    t = hour_ago(2)
    before, at, after = t - timedelta(minutes=30), t, t + timedelta(minutes=30)
    # Ingested before the calibration existed: stays as it was (no backfill asked for).
    early = t + timedelta(minutes=40)
    await send(client, admin, [item(sensor, early, 40.0)])

    await calibrate(client, admin, sensor, effective_from=t, gain=0.5, offset=10)
    just_before = t - timedelta(microseconds=1)
    body = await send(
        client,
        admin,
        [item(sensor, ts, 40.0) for ts in (before, just_before, at, after)],
    )
    assert body["inserted"] == 4, body

    assert await stored(client, admin, sensor, t - timedelta(hours=1), t + timedelta(hours=1)) == {
        before: (40.0, 40.0),
        just_before: (40.0, 40.0),
        at: (30.0, 40.0),
        after: (30.0, 40.0),
        early: (40.0, 40.0),
    }


async def test_two_point_calibration_maps_raw_dry_to_0_and_raw_wet_to_100(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    other = (await make_sensor(client, admin))["id"]
    t = hour_ago(3)
    # Capacitive probes read lower when wet: raw_wet below raw_dry.
    step = await calibrate(client, admin, sensor, effective_from=t, raw_dry=600, raw_wet=200)
    assert (step["gain"], step["offset"], step["raw_dry"], step["raw_wet"]) == (
        -0.25,
        150.0,
        600.0,
        200.0,
    )
    odd = await calibrate(client, admin, other, effective_from=t, raw_dry=520, raw_wet=261.3)
    raws = {600.0: 0.0, 200.0: 100.0, 400.0: 50.0, 500.0: 25.0}
    items = [item(sensor, t + timedelta(minutes=i), raw) for i, raw in enumerate(raws)]
    items += [item(other, t + timedelta(minutes=1), 520.0), item(other, t, 261.3)]
    assert (await send(client, admin, items))["inserted"] == 6

    shown = await stored(client, admin, sensor, t, t + timedelta(hours=1))
    assert sorted(shown.values()) == sorted((value, raw) for raw, value in raws.items())
    theirs = await stored(client, admin, other, t, t + timedelta(hours=1))
    assert theirs[t + timedelta(minutes=1)] == (0.0, 520.0)
    assert theirs[t] == (pytest.approx(100.0, abs=1e-12), 261.3)
    assert odd["gain"] * 261.3 + odd["offset"] == theirs[t][0]


async def test_an_earlier_reading_ingested_after_a_change_uses_the_calibration_of_its_own_time(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    plain = (await make_sensor(client, admin))["id"]
    t0 = hour_ago(6)
    t1, t2 = t0 + timedelta(hours=2), t0 + timedelta(hours=4)
    await calibrate(client, admin, sensor, effective_from=t1, gain=2, offset=0)
    await calibrate(client, admin, sensor, effective_from=t2, gain=3, offset=-1)
    # Newest first, in one late batch: each item finds the step of its own ts.
    moments = [t2 + timedelta(minutes=5), t2, t1 + timedelta(minutes=5), t1, t0]
    items = [item(sensor, ts, 10.0) for ts in moments] + [item(plain, t2, 10.0)]
    assert (await send(client, admin, items))["inserted"] == 6

    shown = await stored(client, admin, sensor, t0, t2 + timedelta(hours=1))
    assert shown == {
        t2 + timedelta(minutes=5): (29.0, 10.0),
        t2: (29.0, 10.0),
        t1 + timedelta(minutes=5): (20.0, 10.0),
        t1: (20.0, 10.0),
        t0: (10.0, 10.0),
    }
    assert await stored(client, admin, plain, t0, t2 + timedelta(hours=1)) == {t2: (10.0, 10.0)}


async def test_the_range_check_judges_the_calibrated_value_and_a_review_calibrates_again(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]  # soil moisture: 0-100 %
    t = hour_ago(1)
    await calibrate(client, admin, sensor, effective_from=t - timedelta(hours=1), gain=0.1)
    body = await send(
        client,
        admin,
        [item(sensor, t, 650.0), item(sensor, t + timedelta(minutes=1), 1200.0)],
    )
    assert (body["inserted"], reasons(body)) == (1, {1: "out_of_range"})
    assert "calibrated from the raw value 1200.0" in body["quarantine"][0]["detail"]

    items = (
        await client.get("/v1/quarantine", params={"job_id": body["job_id"]}, headers=admin)
    ).json()["items"]
    (quarantined,) = items
    assert quarantined["raw"]["value"] == 1200.0  # as sent, not calibrated

    # The reviewer corrects what the sensor sent; the calibration applies again.
    approved = await client.post(
        f"/v1/quarantine/{quarantined['id']}/approve", json={"value": 900.0}, headers=admin
    )
    assert approved.status_code == 200, approved.text
    reading = approved.json()["reading"]
    assert (reading["value"], reading["raw_value"]) == (90.0, 900.0)
    shown = await stored(client, admin, sensor, t, t + timedelta(hours=1))
    assert shown == {t: (65.0, 650.0), t + timedelta(minutes=1): (90.0, 900.0)}


async def test_rollups_aggregates_and_the_hot_cache_hold_calibrated_values(
    client: httpx.AsyncClient, admin: Headers, database_url: str
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    t = hour_ago(2)
    await calibrate(client, admin, sensor, effective_from=t - timedelta(days=1), gain=2, offset=1)
    raws = [10.0, 20.0, 30.0]
    await send(
        client, admin, [item(sensor, t + timedelta(minutes=i), r) for i, r in enumerate(raws)]
    )

    assert await rollups(database_url, sensor) == {t: (3, 123.0, 21.0, 61.0)}
    answer = await client.get(
        f"/v1/sensors/{sensor}/aggregates",
        params={
            "bucket": "hour",
            "start": t.isoformat(),
            "end": (t + timedelta(hours=1)).isoformat(),
        },
        headers=admin,
    )
    assert answer.status_code == 200, answer.text
    (point,) = answer.json()["points"]
    assert (point["count"], point["avg"], point["min"], point["max"]) == (3, 41.0, 21.0, 61.0)
    latest = (await client.get(f"/v1/sensors/{sensor}/latest", headers=admin)).json()
    assert latest["source"] == "cache"
    assert [r["value"] for r in latest["recent"]] == [61.0, 41.0, 21.0]


async def test_a_resent_batch_merges_and_keeps_the_raw_values(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    t = hour_ago(1)
    await calibrate(client, admin, sensor, effective_from=t - timedelta(hours=1), gain=0.5)
    await send(client, admin, [item(sensor, t, 40.0)])
    # The COPY meets the stored reading: the batch goes the merging way (temp table).
    body = await send(
        client, admin, [item(sensor, t, 40.0), item(sensor, t + timedelta(minutes=1), 60.0)]
    )
    assert (body["inserted"], body["duplicates"]) == (1, 1)
    shown = await stored(client, admin, sensor, t, t + timedelta(hours=1))
    assert shown == {t: (20.0, 40.0), t + timedelta(minutes=1): (30.0, 60.0)}


async def test_another_sites_key_can_neither_see_nor_set_a_sensors_calibration(
    client: httpx.AsyncClient, admin: Headers, other_admin: Headers
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    await calibrate(client, admin, sensor, gain=2)
    path = f"/v1/sensors/{sensor}/calibrations"
    assert_problem(await client.get(path, headers=other_admin), 404, "not_found")
    assert_problem(await client.post(path, json={"gain": 5}, headers=other_admin), 404, "not_found")
    steps = (await client.get(path, headers=admin)).json()["items"]
    assert [s["gain"] for s in steps] == [2.0]
    # Their readings of that sensor id are unknown sensors, as always.
    t = hour_ago(1)
    body = await send(client, other_admin, [item(sensor, t, 10.0)])
    assert reasons(body) == {0: "unknown_sensor"}


async def test_an_imported_history_file_is_calibrated_by_each_readings_time(
    client: httpx.AsyncClient, admin: Headers, settings: Settings
) -> None:
    sensor = (await make_sensor(client, admin))["id"]
    t = hour_ago(30)
    await calibrate(client, admin, sensor, effective_from=t, raw_dry=600, raw_wet=200)
    lines = [item(sensor, t - timedelta(hours=1), 70.0), item(sensor, t, 400.0)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    job = await client.post(
        "/v1/ingest/jobs",
        content=content,
        headers={**admin, "Content-Type": "application/x-ndjson"},
    )
    assert job.status_code == 202, job.text
    async with job_context(settings) as ctx:
        assert await import_jobs.process_import(ctx, job.json()["id"]) == "completed"
    shown = await stored(client, admin, sensor, t - timedelta(hours=2), t + timedelta(hours=1))
    assert shown == {t - timedelta(hours=1): (70.0, 70.0), t: (50.0, 400.0)}
