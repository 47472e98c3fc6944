"""The hours of attached flow meters whose readings changed, marked for the water-use
rollup (`pending_flow_hours`), in the transaction that changes the readings.

Only a batch with readings of an attached meter (a flow sensor with a `pump_id` or a
`water_source_id`) pays a statement; every other batch pays one set test. The mark is an
upsert that takes the row's lock even when it exists, in (sensor, hour) order after every
other lock of the batch: the rollup deletes the marks it takes (skipping locked ones), so a
mark is either taken after the readings it stands for committed, or made again after the
rollup's transaction ends. Either way the rollup integrates them."""

import uuid
from collections.abc import Collection
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import ARRAY, DateTime, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.ingest.rows import HOUR_US, PG_EPOCH, Rows

_MARK = text("""
INSERT INTO pending_flow_hours AS p (sensor_id, hour)
SELECT * FROM unnest(:sensors, :hours) ORDER BY 1, 2
ON CONFLICT (sensor_id, hour) DO UPDATE SET hour = EXCLUDED.hour
""").bindparams(
    bindparam("sensors", type_=ARRAY(Uuid)), bindparam("hours", type_=ARRAY(DateTime(True)))
)

# A calibration backfill's chunk: the hours with readings of one sensor, if it is a meter.
_MARK_PERIOD = text("""
INSERT INTO pending_flow_hours AS p (sensor_id, hour)
SELECT r.sensor_id, r.bucket FROM reading_rollups_hourly AS r
WHERE r.sensor_id = :sensor AND r.bucket >= :start AND r.bucket < :end
    AND EXISTS (SELECT 1 FROM sensors AS s WHERE s.id = :sensor
                AND (s.pump_id IS NOT NULL OR s.water_source_id IS NOT NULL))
ORDER BY 1, 2
ON CONFLICT (sensor_id, hour) DO UPDATE SET hour = EXCLUDED.hour
""")


def hours_of(rows: Rows, meters: Collection[uuid.UUID]) -> tuple[list[uuid.UUID], list[datetime]]:
    """The distinct UTC hours of the meters' rows, in (sensor, hour) order."""
    sensors: list[uuid.UUID] = []
    hours: list[datetime] = []
    for sensor_id, (_, start, end) in zip(rows.sensor_ids, rows.runs, strict=True):
        if sensor_id not in meters:
            continue
        # Each sensor's rows run oldest first: its hours are sorted already.
        for hour in np.unique(rows.micros[start:end] // HOUR_US).tolist():
            sensors.append(sensor_id)
            hours.append(PG_EPOCH + timedelta(microseconds=hour * HOUR_US))
    return sensors, hours


async def mark(session: AsyncSession, rows: Rows, meters: Collection[uuid.UUID]) -> None:
    """Mark the hours of the meters' rows; last in the transaction, before the commit."""
    if not meters:
        return
    sensors, hours = hours_of(rows, meters)
    if sensors:
        await session.execute(_MARK, {"sensors": sensors, "hours": hours})


async def mark_period(
    session: AsyncSession, sensor_id: uuid.UUID, start: datetime, end: datetime
) -> None:
    """Mark the hours in [start, end) with readings of this sensor, if it is a meter."""
    await session.execute(_MARK_PERIOD, {"sensor": sensor_id, "start": start, "end": end})
