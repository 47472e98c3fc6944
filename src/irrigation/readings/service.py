"""Aggregate and raw-series use cases, scoped to the caller's site."""

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.errors import Invalid, NotFound
from irrigation.fleet.models import Sensor, Zone
from irrigation.ingest.models import SensorReading
from irrigation.readings.schemas import MAX_BUCKETS, Bucket, Point

DEFAULT_SPAN = {Bucket.hour: timedelta(days=1), Bucket.day: timedelta(days=30)}
STEP = {Bucket.hour: timedelta(hours=1), Bucket.day: timedelta(days=1)}


def window(
    bucket: Bucket, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    """[start, end): defaults to the last day (hour buckets) or 30 days (day buckets)."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise Invalid(
                f"{name} needs a time zone (e.g. 2026-11-23T00:00:00Z)", field=f"query.{name}"
            )
    end = end or utcnow()
    start = start or end - DEFAULT_SPAN[bucket]
    if start >= end:
        raise Invalid("start must be before end", field="query.start")
    # A bucket is at least 23 h (a DST day), so this bounds the answer from above.
    shortest = STEP[bucket] if bucket == Bucket.hour else timedelta(hours=23)
    if (end - start) / shortest > MAX_BUCKETS:
        raise Invalid(
            f"more than {MAX_BUCKETS} {bucket.value} buckets requested; narrow the range",
            field="query.start",
            code="too_many_buckets",
        )
    return start, end


def bucket_starts(bucket: Bucket, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Every bucket start in [start, end) in the zone (for `fill=null`): local days, or
    whole local hours (stepping in absolute time, so DST days have 23 or 25)."""
    local = start.astimezone(tz)
    starts: list[datetime] = []
    if bucket == Bucket.day:
        day = local.date()
        while (moment := datetime(day.year, day.month, day.day, tzinfo=tz)) < end:
            starts.append(moment)
            day += timedelta(days=1)
        return starts
    moment = local.replace(minute=0, second=0, microsecond=0)
    while moment < end:
        starts.append(moment)
        moment = (moment.astimezone(ZoneInfo("UTC")) + timedelta(hours=1)).astimezone(tz)
    return starts


def to_points(
    rows: list[dict[str, Any]],
    bucket: Bucket,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    fill: bool,
) -> list[Point]:
    points = {
        row["start"]: Point(
            start=row["start"].astimezone(tz),
            avg=row["avg"],
            min=row["min"],
            max=row["max"],
            count=row["count"],
        )
        for row in rows
    }
    if not fill:
        return list(points.values())
    return [
        points.get(moment, Point(start=moment, avg=None, min=None, max=None, count=0))
        for moment in bucket_starts(bucket, tz, start, end)
    ]


async def sensor_and_zone(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID
) -> tuple[Sensor, Zone]:
    row = (
        await session.execute(
            select(Sensor, Zone)
            .join(Zone, Zone.id == Sensor.zone_id)
            .where(Sensor.id == sensor_id, Sensor.site_id == site_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("sensor not found")
    return row[0], row[1]


async def zone_sensors(
    session: AsyncSession, site_id: uuid.UUID, zone_id: uuid.UUID, kind: str
) -> tuple[Zone, list[uuid.UUID]]:
    zone = (
        await session.execute(select(Zone).where(Zone.id == zone_id, Zone.site_id == site_id))
    ).scalar_one_or_none()
    if zone is None:
        raise NotFound("zone not found")
    ids = (
        await session.execute(
            select(Sensor.id)
            .where(Sensor.zone_id == zone_id, Sensor.kind == kind)
            .order_by(Sensor.id)
        )
    ).scalars()
    return zone, list(ids)


async def raw_page(
    session: AsyncSession,
    sensor_id: uuid.UUID,
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> list[SensorReading]:
    stmt = (
        select(SensorReading)
        .where(SensorReading.sensor_id == sensor_id, SensorReading.ts >= start)
        .where(SensorReading.ts < end)
        .order_by(SensorReading.ts)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(SensorReading.ts > after)
    return list((await session.execute(stmt)).scalars())


async def stream_raw(
    session: AsyncSession, sensor_id: uuid.UUID, start: datetime, end: datetime
) -> AsyncIterator[tuple[datetime, float, int]]:
    """Every reading in the range, fetched in chunks by a server-side cursor."""
    stmt = (
        select(SensorReading.ts, SensorReading.value, SensorReading.quality)
        .where(SensorReading.sensor_id == sensor_id)
        .where(SensorReading.ts >= start, SensorReading.ts < end)
        .order_by(SensorReading.ts)
        .execution_options(yield_per=5000)
    )
    result = await session.stream(stmt)
    async for ts, value, quality in result:
        yield ts, value, quality
