"""Retention: raw readings older than the retention go, in bounded chunks, within a time
budget; the hourly rollups stay, and aggregates of the purged range still answer from them.

Old readings are written straight into the database with ingestion's own statement
(`store.write_rows`, so the rollups are built as ingestion builds them): the API
refuses readings older than the retention, as it should."""

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation import queue
from irrigation.common.clock import utcnow
from irrigation.db import create_engine, create_sessionmaker
from irrigation.ingest import store
from irrigation.ingest.rows import encode
from irrigation.readings import retention
from irrigation.readings.queries import raw_horizon
from irrigation.settings import Settings
from irrigation.stack import plain_url
from irrigation.worker import PUMP_JOB_TIMEOUT_S, create_worker
from tests.readings.helpers import Reading, aggregates, assert_points, expected_points
from tests.support.api import Headers
from tests.support.factories import make_sensor, make_zone

RETENTION_DAYS = 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"raw_retention_days": RETENTION_DAYS})


@pytest.fixture
async def sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    assert settings.database_url is not None
    conn = await asyncpg.connect(plain_url(settings.database_url))
    yield conn
    await conn.close()


async def insert_directly(db: asyncpg.Connection, readings: Sequence[Reading]) -> None:
    typed = [
        SimpleNamespace(sensor_id=uuid.UUID(r.sensor_id), ts=r.ts, value=r.value, quality=r.quality)
        for r in readings
    ]
    async with db.transaction():
        await store.write_rows(db, encode(typed))


def every(sensor: str, first: datetime, count: int, step: timedelta) -> list[Reading]:
    return [Reading(sensor, first + i * step, float(i % 97)) for i in range(count)]


async def raw_timestamps(db: asyncpg.Connection, sensor: str) -> list[datetime]:
    rows = await db.fetch(
        "SELECT ts FROM sensor_readings WHERE sensor_id = $1 ORDER BY ts", uuid.UUID(sensor)
    )
    return [row["ts"] for row in rows]


async def rollups(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await db.fetch("SELECT * FROM reading_rollups_hourly ORDER BY sensor_id, bucket")
    return [tuple(row) for row in rows]


async def test_purge_deletes_expired_readings_in_chunks_and_keeps_rollups(
    client: httpx.AsyncClient,
    admin: Headers,
    db: asyncpg.Connection,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    first = (await make_sensor(client, admin, zone))["id"]
    second = (await make_sensor(client, admin, zone))["id"]
    cutoff = raw_horizon(utcnow(), RETENTION_DAYS)
    expired = every(first, cutoff - timedelta(hours=23), 23, timedelta(hours=1))
    expired += every(second, cutoff - timedelta(days=9), 7, timedelta(minutes=13))
    kept = every(first, cutoff, 5, timedelta(minutes=1))
    await insert_directly(db, expired + kept)
    rollups_before = await rollups(db)

    purge = await retention.purge_expired_readings(sessions, cutoff, chunk_rows=5)

    assert (purge.deleted, purge.is_complete) == (30, True)
    assert purge.chunks > 1  # in chunks, not one statement
    assert purge.largest_chunk < 30
    assert await raw_timestamps(db, first) == [r.ts for r in kept]
    assert await raw_timestamps(db, second) == []
    assert await rollups(db) == rollups_before
    again = await retention.purge_expired_readings(sessions, cutoff, chunk_rows=5)
    assert (again.deleted, again.is_complete) == (0, True)


async def test_purge_stops_after_its_time_budget_and_the_next_run_goes_on(
    client: httpx.AsyncClient,
    admin: Headers,
    db: asyncpg.Connection,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    zone = (await make_zone(client, admin, timezone="UTC"))["id"]
    sensor = (await make_sensor(client, admin, zone))["id"]
    cutoff = raw_horizon(utcnow(), RETENTION_DAYS)
    await insert_directly(db, every(sensor, cutoff - timedelta(days=2), 12, timedelta(hours=1)))

    runs = []
    while not runs or not runs[-1].is_complete:
        runs.append(
            await retention.purge_expired_readings(sessions, cutoff, chunk_rows=5, budget_s=0)
        )
    assert len(runs) > 1
    assert all(run.chunks <= 1 for run in runs)  # out of time after the first window
    assert sum(run.deleted for run in runs) == 12
    assert await raw_timestamps(db, sensor) == []


async def test_cron_job_applies_the_retention_setting_and_aggregates_still_answer(
    client: httpx.AsyncClient,
    admin: Headers,
    db: asyncpg.Connection,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    berlin_zone = (await make_zone(client, admin, timezone="Europe/Berlin"))["id"]
    berlin = (await make_sensor(client, admin, berlin_zone))["id"]
    india_zone = (await make_zone(client, admin, timezone="Asia/Kolkata"))["id"]
    india = (await make_sensor(client, admin, india_zone))["id"]
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old_start, recent_start = day - timedelta(days=40), day - timedelta(days=20)
    step = timedelta(minutes=17)
    readings = {
        sensor: every(sensor, old_start, 3 * 24 * 60 // 17, step) for sensor in (berlin, india)
    }
    recent = {sensor: every(sensor, recent_start, 200, step) for sensor in (berlin, india)}
    await insert_directly(db, [r for rs in [*readings.values(), *recent.values()] for r in rs])

    # As the worker calls it: ctx["irrigation"] carries the settings and the sessions.
    ctx = {"irrigation": SimpleNamespace(settings=settings, sessions=sessions)}
    deleted = await retention.purge_raw_readings(ctx)

    assert deleted == sum(len(rs) for rs in readings.values())
    for sensor in (berlin, india):
        assert await raw_timestamps(db, sensor) == [r.ts for r in recent[sensor]]
    # Purged whole hours answer from the rollups, exactly in a whole-hour zone.
    start, end = old_start - timedelta(days=1), old_start + timedelta(days=4)
    path = f"/v1/sensors/{berlin}/aggregates"
    for bucket in ("hour", "day"):
        got = await aggregates(client, admin, path, bucket=bucket, start=start, end=end)
        assert_points(
            got["points"], expected_points(readings[berlin], "Europe/Berlin", bucket, start, end)
        )
    # A half-hour zone's straddling hours have no raw rows left: each counts, whole, in the
    # local bucket where it starts. Nothing is lost, nothing counted twice.
    path = f"/v1/sensors/{india}/aggregates"
    for bucket in ("hour", "day"):
        got = await aggregates(client, admin, path, bucket=bucket, start=start, end=end)
        assert sum(p["count"] for p in got["points"]) == len(readings[india])
        assert all(datetime.fromisoformat(p["start"]).minute == 0 for p in got["points"])


async def test_worker_runs_the_purge_hourly_within_its_budget_and_the_pump_job_timeout(
    settings: Settings,
) -> None:
    worker = create_worker(settings, queue.BULK)
    try:
        (job,) = [j for j in worker.cron_jobs if j.coroutine is retention.purge_raw_readings]
    finally:
        await worker.pool.aclose()  # worker.close() calls redis' deprecated close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(signum)
    assert job.hour is None  # every hour,
    assert isinstance(job.minute, set)
    assert len(job.minute) == 1  # once
    assert job.timeout_s is not None
    # A longer timeout would delay the retry of a SIGKILLed pump job (see worker.py).
    assert retention.TIME_BUDGET_S < job.timeout_s <= PUMP_JOB_TIMEOUT_S
