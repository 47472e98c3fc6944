"""A sensor's calibration history: add a step, list the steps, delete one not yet in effect.

The history is append-only on purpose: with `created_at` and `effective_from`, it says
which calibration every stored value was derived with (the step in effect at the reading's
time among those that existed when it was ingested or last backfilled). Deleting a step
that could already have calibrated a reading would take that answer away, so only a step
that no reading can have met yet may go: one starting later than the newest time a reading
may carry (now + 5 minutes). A step in effect is corrected by a later one, and a backfill
derives the stored values again."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common.clock import utcnow
from irrigation.common.dberrors import UNIQUE_VIOLATION, pg_error
from irrigation.common.errors import DomainError, Duplicate, Invalid, NotFound
from irrigation.common.pagination import PageParams, encode_cursor, paginate
from irrigation.fleet.models import Sensor, SensorCalibration
from irrigation.ingest.validation import MAX_FUTURE
from irrigation.readings.calibration_schemas import CalibrationCreate

MAX_CALIBRATIONS = 100
"""Steps per sensor: ingestion reads a sensor's whole history with every batch."""
MAX_AHEAD = timedelta(days=366)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


class TooManyCalibrations(DomainError):
    status, code, title = 409, "too_many_calibrations", "Too many calibrations"


class CalibrationInEffect(DomainError):
    status, code, title = 409, "calibration_in_effect", "Calibration in effect"


async def owned_sensor(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID, *, lock: bool = False
) -> None:
    """NotFound unless the sensor is the site's. `lock`: FOR KEY SHARE, so it cannot be
    deleted before the commit, without waiting for (or holding up) ingestion, whose
    `last_seen_at` update takes FOR NO KEY UPDATE."""
    stmt = select(Sensor.id).where(Sensor.id == sensor_id, Sensor.site_id == site_id)
    if lock:
        stmt = stmt.with_for_update(read=True, key_share=True)
    if (await session.execute(stmt)).first() is None:
        raise NotFound("sensor not found")


def _effective_from(body: CalibrationCreate, now: datetime) -> datetime:
    moment = (body.effective_from or now).astimezone(UTC)
    if moment < EARLIEST:
        raise Invalid("effective_from must not be before 1900", field="body.effective_from")
    if moment > now + MAX_AHEAD:
        raise Invalid(
            f"effective_from must be at most {MAX_AHEAD.days} days ahead",
            field="body.effective_from",
        )
    return moment


async def create(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID, body: CalibrationCreate
) -> SensorCalibration:
    effective_from = _effective_from(body, utcnow())
    gain, offset = body.coefficients()
    async with session.begin():
        await owned_sensor(session, site_id, sensor_id, lock=True)
        # Not serialised: two racing creates may pass the limit by one each, which the
        # limit tolerates (it bounds a batch's lookup, not a safety property).
        count = (
            await session.execute(
                select(func.count()).where(SensorCalibration.sensor_id == sensor_id)
            )
        ).scalar_one()
        if count >= MAX_CALIBRATIONS:
            raise TooManyCalibrations(
                f"the sensor has {MAX_CALIBRATIONS} calibrations already",
                limit=MAX_CALIBRATIONS,
            )
        step = SensorCalibration(
            site_id=site_id,
            sensor_id=sensor_id,
            effective_from=effective_from,
            gain=gain,
            offset=offset,
            raw_dry=body.raw_dry,
            raw_wet=body.raw_wet,
        )
        session.add(step)
        try:
            await session.flush()
        except IntegrityError as exc:
            if pg_error(exc).sqlstate == UNIQUE_VIOLATION:
                raise Duplicate(
                    f"the sensor has a calibration from {effective_from.isoformat()} already"
                ) from None
            raise
    return step


async def list_steps(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID, params: PageParams
) -> tuple[list[SensorCalibration], str | None]:
    """Oldest `effective_from` first: the history in the order it applies."""
    await owned_sensor(session, site_id, sensor_id)
    stmt = select(SensorCalibration).where(SensorCalibration.sensor_id == sensor_id)
    stmt = paginate(stmt, SensorCalibration.effective_from, SensorCalibration.id, params)
    rows = list((await session.execute(stmt)).scalars())
    if len(rows) <= params.limit:
        return rows, None
    rows = rows[: params.limit]
    return rows, encode_cursor(rows[-1].effective_from, rows[-1].id)


async def delete_step(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID, calibration_id: uuid.UUID
) -> None:
    async with session.begin():
        await owned_sensor(session, site_id, sensor_id)
        step = (
            await session.execute(
                select(SensorCalibration)
                .where(
                    SensorCalibration.id == calibration_id,
                    SensorCalibration.sensor_id == sensor_id,
                )
                .with_for_update()
            )
        ).scalar_one_or_none()
        if step is None:
            raise NotFound("calibration not found")
        applies_from = utcnow() + MAX_FUTURE
        if step.effective_from <= applies_from:
            raise CalibrationInEffect(
                "readings may already have been calibrated with it (it starts before "
                f"{applies_from.isoformat()}, the newest time a reading may carry); add a "
                "later calibration instead, and backfill",
                effective_from=step.effective_from.isoformat(),
            )
        await session.execute(delete(SensorCalibration).where(SensorCalibration.id == step.id))
