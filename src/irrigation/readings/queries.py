"""Aggregates in SQL, one statement: whole UTC hours from the hourly rollup, the partial
hours at the edges of the range from raw rows, merged and bucketed by `date_trunc` in the
zone's time zone.

A rollup hour serves a local bucket only if it lies wholly inside it. That is every hour of
a zone whose offset is a whole number of hours; in a half-hour zone (India, Newfoundland)
it is no hour bucket and one hour a day of day buckets. Those straddling hours are read
from raw rows, each through the primary key (sensor_id, ts). Past the raw retention there
are no raw rows left: a straddling hour then counts, whole, in the bucket where it starts.

Plans (EXPLAIN ANALYZE in docs/architecture.md): every part is an index range scan on a
primary key, the rollup's for the whole hours and the readings' for the two edges and the
straddling hours, which are probed one by one (LATERAL, so never a hash join over the
sensors' whole history)."""

import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import TextClause, func, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.fleet.models import Sensor, Zone
from irrigation.readings.schemas import Bucket

HOUR = timedelta(hours=1)
_PROBE_STEP = timedelta(hours=12)

# Both statement shapes below: totals per bucket over the parts, whose last two are the raw
# readings of the partial hours at the edges of the range.
_TOTALS_OF = """SELECT {group} b AS start, sum(c)::bigint AS count, sum(s) / sum(c) AS avg,
       min(mn) AS min, max(mx) AS max
FROM ("""
_EDGES_AND_TOTALS = """    UNION ALL
    SELECT sensor_id, date_trunc(:unit, ts, :tz), 1, value, value, value
    FROM sensor_readings
    WHERE sensor_id = ANY(:ids) AND ts >= :start AND ts < :whole_start
    UNION ALL
    SELECT sensor_id, date_trunc(:unit, ts, :tz), 1, value, value, value
    FROM sensor_readings
    WHERE sensor_id = ANY(:ids) AND ts >= :whole_end AND ts < :end
) AS parts
GROUP BY {group} b
ORDER BY {group} b
"""

# Zones whose offset is always a whole number of hours: every rollup hour lies inside one
# local hour and one local day. The rollup rows and the raw rows of the two edges are
# grouped once, together (no per-part aggregation: the edges are at most an hour each).
_WHOLE_HOUR_ZONE = (
    """
"""
    + _TOTALS_OF
    + """
    SELECT sensor_id, {rollup_bucket} AS b, count AS c, sum AS s, min AS mn, max AS mx
    FROM reading_rollups_hourly
    WHERE sensor_id = ANY(:ids) AND bucket >= :whole_start AND bucket < :whole_end
"""
    + _EDGES_AND_TOTALS
)

# Zones with a fractional offset at some time: each rollup hour is checked; one that
# straddles two local buckets is read raw (an index range probe per hour, LATERAL so it is
# never a hash join over the sensors' history), unless it is older than the raw retention.
_FRACTIONAL_ZONE = (
    """
WITH hours AS MATERIALIZED (
    SELECT sensor_id, bucket, count, sum, min, max,
           date_trunc(:unit, bucket, :tz)
               = date_trunc(:unit, bucket + interval '59:59.999999', :tz)
           OR bucket < :raw_since AS is_inside
    FROM reading_rollups_hourly
    WHERE sensor_id = ANY(:ids) AND bucket >= :whole_start AND bucket < :whole_end
)
"""
    + _TOTALS_OF
    + """
    SELECT sensor_id, date_trunc(:unit, bucket, :tz) AS b,
           count AS c, sum AS s, min AS mn, max AS mx
    FROM hours WHERE is_inside
    UNION ALL
    SELECT h.sensor_id, raw.b, raw.c, raw.s, raw.mn, raw.mx
    FROM hours AS h CROSS JOIN LATERAL (
        SELECT date_trunc(:unit, ts, :tz) AS b,
               count(*) AS c, sum(value) AS s, min(value) AS mn, max(value) AS mx
        FROM sensor_readings
        WHERE sensor_id = h.sensor_id AND ts >= h.bucket AND ts < h.bucket + interval '1 hour'
        GROUP BY 1
    ) AS raw
    WHERE NOT h.is_inside
"""
    + _EDGES_AND_TOTALS
)


def _statement(template: str, per_sensor: bool, *, hour_is_bucket: bool) -> str:
    # A rollup hour of a whole-hour zone is a local hour already: no date_trunc per row.
    rollup_bucket = "bucket" if hour_is_bucket else "date_trunc(:unit, bucket, :tz)"
    return template.format(group="sensor_id," if per_sensor else "", rollup_bucket=rollup_bucket)


_STATEMENTS = {
    (fractional, bucket, per_sensor): text(
        _statement(
            _FRACTIONAL_ZONE if fractional else _WHOLE_HOUR_ZONE,
            per_sensor,
            hour_is_bucket=not fractional and bucket == Bucket.hour,
        )
    )
    for fractional in (False, True)
    for bucket in Bucket
    for per_sensor in (False, True)
}


@lru_cache(maxsize=1024)
def has_fractional_offset(tz_name: str) -> bool:
    """Did (or will) the zone's UTC offset ever be other than whole hours, 1970-2050?

    Probed twice a day (about 40 ms, once per zone and process): no offset in the tz
    database lasts less than half a day."""
    tz = ZoneInfo(tz_name)
    moment, until = datetime(1970, 1, 1, tzinfo=UTC), datetime(2050, 1, 1, tzinfo=UTC)
    while moment < until:
        offset = moment.astimezone(tz).utcoffset() or timedelta(0)
        if offset.total_seconds() % 3600:
            return True
        moment += _PROBE_STEP
    return False


def floor_hour(moment: datetime) -> datetime:
    """The UTC hour that holds `moment` (in UTC: a `+05:30` input has no whole-hour floor
    of its own)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def raw_horizon(now: datetime, retention_days: int) -> datetime:
    """The oldest instant raw readings are kept for: older ones are (being) deleted by the
    retention job. Hour-aligned, so the deletion takes whole rollup hours."""
    return floor_hour(now - timedelta(days=retention_days))


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours inside [start, end), as [whole_start, whole_end): the rollup's
    share. The edges [start, whole_start) and [whole_end, end) are read raw; when no whole
    hour fits, the first edge is the whole range and the second is empty."""
    whole_start = floor_hour(start)
    if whole_start < start:
        whole_start += HOUR
    whole_end = floor_hour(end)
    if whole_start > whole_end:
        return end, end
    return whole_start, whole_end


async def sensor_timezone(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID
) -> str | None:
    """The time zone of the sensor's zone, if the sensor is the site's."""
    stmt = (
        select(Zone.timezone)
        .join(Sensor, Sensor.zone_id == Zone.id)
        .where(Sensor.id == sensor_id, Sensor.site_id == site_id)
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else row.timezone


async def zone_timezone_and_sensors(
    session: AsyncSession, site_id: uuid.UUID, zone_id: uuid.UUID, kind: str
) -> tuple[str, list[uuid.UUID]] | None:
    """The zone's time zone and its sensors of `kind` (by id), if the zone is the site's:
    one round trip."""
    sensor_ids = (
        select(func.array_agg(aggregate_order_by(Sensor.id, Sensor.id)))
        .where(Sensor.zone_id == Zone.id, Sensor.site_id == site_id, Sensor.kind == kind)
        .scalar_subquery()
    )
    stmt = select(Zone.timezone, sensor_ids.label("sensor_ids")).where(
        Zone.id == zone_id, Zone.site_id == site_id
    )
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row.timezone, list(row.sensor_ids or []))


def aggregate_statement(
    sensor_ids: list[uuid.UUID],
    bucket: Bucket,
    tz_name: str,
    start: datetime,
    end: datetime,
    raw_since: datetime,
    *,
    per_sensor: bool = False,
) -> tuple[TextClause, dict[str, Any]]:
    """The one statement of an aggregate, and its parameters (benchmarks EXPLAIN it)."""
    whole_start, whole_end = whole_hours(start, end)
    params: dict[str, Any] = {
        "unit": bucket.value,
        "tz": tz_name,
        "ids": sensor_ids,
        "start": start,
        "end": end,
        "whole_start": whole_start,
        "whole_end": whole_end,
    }
    fractional = has_fractional_offset(tz_name)
    if fractional:
        params["raw_since"] = raw_since
    return _STATEMENTS[fractional, bucket, per_sensor], params


async def aggregate(
    session: AsyncSession,
    sensor_ids: list[uuid.UUID],
    bucket: Bucket,
    tz_name: str,
    start: datetime,
    end: datetime,
    raw_since: datetime,
    *,
    per_sensor: bool = False,
) -> list[tuple[Any, ...]]:
    """Rows `(sensor_id?, start, count, avg, min, max)`, ordered by (sensor_id,) start;
    empty buckets have no row. `raw_since`: the oldest instant raw rows are kept for."""
    statement, params = aggregate_statement(
        sensor_ids, bucket, tz_name, start, end, raw_since, per_sensor=per_sensor
    )
    result = await session.execute(statement, params)
    return [tuple(row) for row in result]
