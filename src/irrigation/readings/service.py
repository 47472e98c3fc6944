"""Aggregate and raw-series use cases, scoped to the caller's site."""

import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.errors import Invalid, NotFound
from irrigation.ingest.models import SensorReading
from irrigation.readings import queries
from irrigation.readings.schemas import (
    MAX_BUCKETS,
    Bucket,
    Point,
    SensorAggregates,
    SensorSeries,
    ZoneAggregates,
)

DEFAULT_SPAN = {Bucket.hour: timedelta(days=1), Bucket.day: timedelta(days=30)}
RAW_DEFAULT_SPAN = timedelta(days=30)
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
# Far enough for any reading or rollup, near enough that any zone's local time exists.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
_POINTS = TypeAdapter(list[Point])
_EMPTY = (None, 0, None, None, None)


def window(
    start: datetime | None, end: datetime | None, default_span: timedelta
) -> tuple[datetime, datetime]:
    """[start, end) in UTC; `end` defaults to now and `start` to `end - default_span`."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.utcoffset() is None:
            raise Invalid(
                f"{name} needs a time zone (e.g. 2026-11-23T00:00:00Z)",
                field=f"query.{name}",
            )
    try:
        end = (end or utcnow()).astimezone(UTC)
        start = (start or end - default_span).astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00: before datetime.min in UTC
        raise Invalid("start or end is out of range", field="query.start") from None
    if start < EARLIEST or end > LATEST:
        raise Invalid(
            f"start and end must lie between {EARLIEST:%Y} and {LATEST:%Y}", field="query.start"
        )
    if start >= end:
        raise Invalid("start must be before end", field="query.start")
    return start, end


def _local_hour(moment: datetime, tz: ZoneInfo) -> datetime:
    """Start of the zone's hour holding `moment`, in UTC (a fold keeps its offset)."""
    return moment.astimezone(tz).replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def bucket_count(bucket: Bucket, tz: ZoneInfo, start: datetime, end: datetime) -> int:
    """How many buckets of the zone [start, end) touches, partial ones included."""
    last = end - TICK
    if bucket == Bucket.day:
        return (last.astimezone(tz).date() - start.astimezone(tz).date()).days + 1
    return (_local_hour(last, tz) - _local_hour(start, tz)) // HOUR + 1


def check_bucket_count(bucket: Bucket, tz: ZoneInfo, start: datetime, end: datetime) -> None:
    if bucket_count(bucket, tz, start, end) > MAX_BUCKETS:
        raise Invalid(
            f"more than {MAX_BUCKETS} {bucket.value} buckets requested; narrow the range",
            field="query.start",
            code="too_many_buckets",
        )


def bucket_starts(bucket: Bucket, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Every bucket start in [start, end) in the zone (for `fill=null`): local midnights, or
    whole local hours stepped in absolute time (so a DST day has 23 or 25 of them)."""
    local = start.astimezone(tz)
    starts: list[datetime] = []
    if bucket == Bucket.day:
        day = local.date()
        while (moment := datetime(day.year, day.month, day.day, tzinfo=tz)) < end:
            starts.append(moment)
            day += timedelta(days=1)
        return starts
    moment = _local_hour(start, tz)
    while moment < end:
        starts.append(moment.astimezone(tz))
        moment += HOUR
    return starts


def to_points(
    rows: Iterable[tuple[Any, ...]],
    bucket: Bucket,
    tz: ZoneInfo,
    start: datetime,
    end: datetime,
    fill: bool,
) -> list[Point]:
    """Rows `(start, count, avg, min, max)` as points in the zone's local time; with `fill`,
    every bucket of the range, the empty ones as nulls.

    Buckets are matched by UTC instant: an aware datetime in a DST fold (the repeated hour
    of a fall-back day) compares unequal to, and hashes apart from, the same instant in
    another zone. One validation call for the whole list (half the time of a Point()
    per row, measured)."""
    if not fill:
        items = [
            {"start": moment.astimezone(tz), "count": n, "avg": avg, "min": low, "max": high}
            for moment, n, avg, low, high in rows
        ]
        return _POINTS.validate_python(items)
    found = {row[0]: row for row in rows}
    items = []
    for moment in bucket_starts(bucket, tz, start, end):
        _, n, avg, low, high = found.get(moment.astimezone(UTC), _EMPTY)
        items.append({"start": moment, "count": n, "avg": avg, "min": low, "max": high})
    return _POINTS.validate_python(items)


async def sensor_timezone(session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID) -> str:
    """The time zone of the sensor's zone; NotFound for another site's or nobody's sensor."""
    timezone = await queries.sensor_timezone(session, site_id, sensor_id)
    if timezone is None:
        raise NotFound("sensor not found")
    return timezone


async def sensor_aggregates(
    session: AsyncSession,
    site_id: uuid.UUID,
    sensor_id: uuid.UUID,
    bucket: Bucket,
    start: datetime | None,
    end: datetime | None,
    *,
    fill: bool,
    retention_days: int,
) -> SensorAggregates:
    start, end = window(start, end, DEFAULT_SPAN[bucket])
    timezone = await sensor_timezone(session, site_id, sensor_id)
    tz = ZoneInfo(timezone)
    check_bucket_count(bucket, tz, start, end)
    raw_since = queries.raw_horizon(utcnow(), retention_days)
    rows = await queries.aggregate(session, [sensor_id], bucket, timezone, start, end, raw_since)
    return SensorAggregates(
        sensor_id=sensor_id,
        bucket=bucket,
        timezone=timezone,
        points=to_points(rows, bucket, tz, start, end, fill),
    )


async def zone_aggregates(
    session: AsyncSession,
    site_id: uuid.UUID,
    zone_id: uuid.UUID,
    kind: str,
    bucket: Bucket,
    start: datetime | None,
    end: datetime | None,
    *,
    fill: bool,
    per_sensor: bool,
    retention_days: int,
) -> ZoneAggregates:
    """The zone's sensors of one kind: one series over all their readings together (a true
    average, each reading weighing the same), or one series per sensor."""
    start, end = window(start, end, DEFAULT_SPAN[bucket])
    found = await queries.zone_timezone_and_sensors(session, site_id, zone_id, kind)
    if found is None:
        raise NotFound("zone not found")
    timezone, ids = found
    tz = ZoneInfo(timezone)
    check_bucket_count(bucket, tz, start, end)
    answer = ZoneAggregates(
        zone_id=zone_id, kind=kind, bucket=bucket, timezone=timezone, sensor_ids=ids
    )
    rows: list[tuple[Any, ...]] = []
    if ids:
        raw_since = queries.raw_horizon(utcnow(), retention_days)
        rows = await queries.aggregate(
            session, ids, bucket, timezone, start, end, raw_since, per_sensor=per_sensor
        )
    if not per_sensor:
        answer.points = to_points(rows, bucket, tz, start, end, fill)
        return answer
    by_sensor = {
        sensor_id: [row[1:] for row in group]
        for sensor_id, group in itertools.groupby(rows, key=lambda row: row[0])
    }
    answer.series = [
        SensorSeries(
            sensor_id=sid, points=to_points(by_sensor.get(sid, []), bucket, tz, start, end, fill)
        )
        for sid in ids
    ]
    return answer


async def raw_page(
    session: AsyncSession,
    sensor_id: uuid.UUID,
    start: datetime,
    end: datetime,
    after: datetime | None,
    limit: int,
) -> list[SensorReading]:
    """Up to `limit + 1` readings after the cursor, oldest first (one more than a page, to
    know whether there is a next one). (sensor_id, ts) is the key: `ts > after` neither
    skips nor repeats a reading."""
    stmt = (
        select(SensorReading)
        .where(SensorReading.sensor_id == sensor_id)
        .where(SensorReading.ts >= start, SensorReading.ts < end)
        .order_by(SensorReading.ts)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(SensorReading.ts > after)
    return list((await session.execute(stmt)).scalars())


async def stream_raw(
    session: AsyncSession, sensor_id: uuid.UUID, start: datetime, end: datetime
) -> AsyncIterator[tuple[datetime, float, int, float]]:
    """Every reading in the range (ts, value, quality, raw value), fetched in chunks by a
    server-side cursor."""
    stmt = (
        select(
            SensorReading.ts,
            SensorReading.value,
            SensorReading.quality,
            func.coalesce(SensorReading.raw_value, SensorReading.value),
        )
        .where(SensorReading.sensor_id == sensor_id)
        .where(SensorReading.ts >= start, SensorReading.ts < end)
        .order_by(SensorReading.ts)
        .execution_options(yield_per=5000)
    )
    result = await session.stream(stmt)
    async for ts, value, quality, raw in result:
        yield ts, value, quality, raw
