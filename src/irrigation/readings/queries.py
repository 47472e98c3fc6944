"""Aggregates in SQL: whole UTC hours from the hourly rollup, the partial hours at the edges
from raw rows, merged and bucketed by `date_trunc` in the zone's time zone, in one query.

A rollup hour can serve a local bucket only if the zone's offset is a whole number of
hours then (else the UTC hour straddles two local hours): rollup rows are filtered on
that, and zones with fractional offsets (India, Nepal, Newfoundland, ...) read raw rows."""

import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.readings.schemas import Bucket

_MERGED = """
WITH parts AS (
    SELECT sensor_id, date_trunc(:unit, bucket, :tz) AS b,
           sum(count) AS c, sum(sum) AS s, min(min) AS mn, max(max) AS mx
    FROM reading_rollups_hourly
    WHERE sensor_id = ANY(:ids) AND bucket >= :whole_start AND bucket < :whole_end
    GROUP BY 1, 2
    UNION ALL
    SELECT sensor_id, date_trunc(:unit, ts, :tz) AS b,
           count(*) AS c, sum(value) AS s, min(value) AS mn, max(value) AS mx
    FROM sensor_readings
    WHERE sensor_id = ANY(:ids)
      AND ((ts >= :start AND ts < :whole_start) OR (ts >= :whole_end AND ts < :end))
    GROUP BY 1, 2
)
SELECT {group} b AS start, sum(c)::bigint AS count, sum(s) / sum(c) AS avg,
       min(mn) AS min, max(mx) AS max
FROM parts GROUP BY {group} b ORDER BY {group} b
"""

_RAW = """
SELECT {group} date_trunc(:unit, ts, :tz) AS start, count(*) AS count, avg(value) AS avg,
       min(value) AS min, max(value) AS max
FROM sensor_readings
WHERE sensor_id = ANY(:ids) AND ts >= :start AND ts < :end
GROUP BY {group} 2 ORDER BY {group} 2
"""


def _hour_ceil(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def whole_hour_offsets(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """True if every UTC offset of the zone in [start, end] is a whole number of hours."""
    probe = start
    step = timedelta(days=30)
    while True:
        offset = probe.astimezone(tz).utcoffset() or timedelta(0)
        if offset.total_seconds() % 3600:
            return False
        if probe >= end:
            return True
        probe = min(probe + step, end)


async def aggregate(
    session: AsyncSession,
    sensor_ids: list[uuid.UUID],
    bucket: Bucket,
    tz_name: str,
    start: datetime,
    end: datetime,
    *,
    per_sensor: bool = False,
) -> list[dict[str, Any]]:
    """Rows `{sensor_id?, start, count, avg, min, max}` ordered by (sensor,) start."""
    group = "sensor_id," if per_sensor else ""
    params: dict[str, Any] = {
        "unit": bucket.value,
        "tz": tz_name,
        "ids": sensor_ids,
        "start": start,
        "end": end,
    }
    whole_start, whole_end = _hour_ceil(start), end.replace(minute=0, second=0, microsecond=0)
    if whole_start < whole_end and whole_hour_offsets(ZoneInfo(tz_name), start, end):
        sql = _MERGED.format(group=group)
        params |= {"whole_start": whole_start, "whole_end": whole_end}
    else:
        sql = _RAW.format(group=group)
    rows = await session.execute(text(sql), params)
    return [dict(row._mapping) for row in rows]
