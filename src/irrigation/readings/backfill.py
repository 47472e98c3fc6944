"""Calibration backfills: a sensor's readings of a period get their values derived again
from their raw values with the calibrations in effect at their times, and the hourly
rollups of the hours touched are rebuilt from the readings.

An arq job on the bulk queue, in chunks of whole UTC hours, one transaction each, oldest
first; the backfill row holds the progress (`done_until`), so a killed worker resumes where
the last committed chunk ended, and running a chunk twice derives the same values again
(idempotent). Each run stops after SLICE_S and asks to be run again, as imports do, to stay
inside the workers' short job timeout.

A chunk, in one transaction:
  1. lock the chunk's existing rollup rows (sensor, bucket order, as ingestion takes them)
  2. UPDATE the readings whose value (or raw value) changes
  3. rebuild the chunk's hourly rollups from the readings (count, sum, min, max)
Step 1 makes 3 exact beside live ingestion: a batch writing into one of these hours either
committed before the lock (its readings are seen by 2 and 3, each a statement with a fresh
snapshot), or waits for the lock with its readings uncommitted and adds its own counts on
top after this commit. A batch opening a new hour creates that hour's rollup row itself: 3
sees either its committed readings and row, or neither."""

import functools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import queue
from irrigation.common import idempotency
from irrigation.common.clock import utcnow
from irrigation.common.dberrors import UNIQUE_VIOLATION, pg_error
from irrigation.common.errors import DomainError, Invalid, NotFound
from irrigation.common.idempotency import IdempotentRequest, StoredAnswer
from irrigation.common.retry import retry_on_deadlock
from irrigation.common.worker_context import worker_context
from irrigation.ingest import flow_hours
from irrigation.ingest.cache import RECENT, HotCache
from irrigation.ingest.models import SensorReading
from irrigation.ingest.rows import Columns, encode
from irrigation.ingest.validation import MAX_FUTURE
from irrigation.readings.calibration_schemas import BackfillCreate, BackfillOut
from irrigation.readings.calibrations import owned_sensor
from irrigation.readings.models import BackfillStatus, CalibrationBackfill
from irrigation.readings.queries import HOUR, floor_hour, raw_horizon
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

MAX_SPAN = timedelta(days=366)
SLICE_S = 10.0
# Chunks are sized to about CHUNK_READINGS readings, from the last chunk's count.
CHUNK_READINGS = 20_000
FIRST_WINDOW = timedelta(hours=6)
MAX_WINDOW = timedelta(days=7)
MAX_GROWTH = 4
REQUEUE_AFTER_S = 60
_DONE = (BackfillStatus.completed, BackfillStatus.failed)


class BackfillInProgress(DomainError):
    status, code, title = 409, "backfill_in_progress", "Backfill in progress"

    def __init__(self, backfill_id: uuid.UUID) -> None:
        super().__init__(
            f"backfill {backfill_id} of this sensor is not finished yet",
            backfill_id=str(backfill_id),
        )


def location(backfill: CalibrationBackfill) -> str:
    return f"/v1/sensors/{backfill.sensor_id}/calibrations/backfills/{backfill.id}"


def backfill_out(backfill: CalibrationBackfill) -> dict[str, Any]:
    return BackfillOut.model_validate(backfill).model_dump(mode="json", by_alias=True)


def _period(settings: Settings, body: BackfillCreate, now: datetime) -> tuple[datetime, datetime]:
    start = body.start.astimezone(UTC)
    # Nothing is stored later than readings may be: a later `to` means "up to now".
    end = min(body.end.astimezone(UTC), now + MAX_FUTURE)
    if start >= end:
        raise Invalid("from must be before to, and not in the future", field="body.from")
    if end - start > MAX_SPAN:
        raise Invalid(f"at most {MAX_SPAN.days} days from from to to", field="body.to")
    if start < raw_horizon(now, settings.raw_retention_days):
        raise Invalid(
            "from is older than the raw retention: those readings' raw values are gone",
            field="body.from",
            code="beyond_raw_retention",
        )
    return start, end


async def request_backfill(
    session: AsyncSession,
    settings: Settings,
    redis: ArqRedis,
    site_id: uuid.UUID,
    sensor_id: uuid.UUID,
    body: BackfillCreate,
    idem: IdempotentRequest | None,
) -> StoredAnswer:
    """The queued backfill (202, with its Location), committed before the job is queued."""
    start, end = _period(settings, body, utcnow())
    async with idempotency.begin(session, idem, settings.idempotency_ttl_s) as claim:
        if claim.replay is not None:
            return claim.replay
        await owned_sensor(session, site_id, sensor_id, lock=True)
        unfinished = (
            await session.execute(
                select(CalibrationBackfill.id).where(
                    CalibrationBackfill.sensor_id == sensor_id,
                    CalibrationBackfill.status.in_((BackfillStatus.queued, BackfillStatus.running)),
                )
            )
        ).scalar_one_or_none()
        if unfinished is not None:
            raise BackfillInProgress(unfinished)
        backfill = CalibrationBackfill(
            site_id=site_id,
            sensor_id=sensor_id,
            start=start,
            end=end,
            status=BackfillStatus.queued,
            done_until=start,
            readings_updated=0,
            hours_rolled_up=0,
            created_at=utcnow(),
        )
        session.add(backfill)
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError as exc:
            # Another request's backfill of this sensor committed since the check.
            if pg_error(exc).sqlstate != UNIQUE_VIOLATION:
                raise
            raise BackfillInProgress(await _unfinished_of(session, sensor_id)) from None
        answer = StoredAnswer(202, backfill_out(backfill), {"Location": location(backfill)})
        await claim.store(answer)
    await queue.enqueue_backfill(redis, backfill.id)
    return answer


async def _unfinished_of(session: AsyncSession, sensor_id: uuid.UUID) -> uuid.UUID:
    found = await session.execute(
        select(CalibrationBackfill.id).where(
            CalibrationBackfill.sensor_id == sensor_id,
            CalibrationBackfill.status.in_((BackfillStatus.queued, BackfillStatus.running)),
        )
    )
    return found.scalar_one()


async def get_backfill(
    session: AsyncSession, site_id: uuid.UUID, sensor_id: uuid.UUID, backfill_id: uuid.UUID
) -> CalibrationBackfill:
    await owned_sensor(session, site_id, sensor_id)
    found = await session.execute(
        select(CalibrationBackfill).where(
            CalibrationBackfill.id == backfill_id, CalibrationBackfill.sensor_id == sensor_id
        )
    )
    backfill = found.scalar_one_or_none()
    if backfill is None:
        raise NotFound("backfill not found")
    return backfill


# The job -------------------------------------------------------------------------------

# Step 1: the rollup rows of the chunk's hours that exist, in ingestion's lock order; the
# mode ingestion's upsert takes (FOR NO KEY UPDATE), so each waits for the other.
_LOCK_ROLLUPS = """
SELECT 1 FROM reading_rollups_hourly
WHERE sensor_id = :sensor AND bucket >= :hours_start AND bucket < :hours_end
ORDER BY bucket
FOR NO KEY UPDATE
"""

# Step 2: the sensor's calibration steps as time segments [lo, hi), with the segment
# before its first step (no gain: the raw value as it is); each segment an index range of
# the readings. Only rows whose value or raw value changes are written: a period that no
# calibration ever touched (raw_value NULL, no step) writes nothing. `gain * raw + offset`,
# as ingestion computes it (calibration.calibrate), so both derive the very same value.
_DERIVE = """
WITH steps AS (
    SELECT effective_from AS lo,
           lead(effective_from, 1, 'infinity') OVER (ORDER BY effective_from) AS hi,
           gain, "offset"
    FROM sensor_calibrations WHERE sensor_id = :sensor
    UNION ALL
    SELECT '-infinity', coalesce(min(effective_from), 'infinity'), NULL, NULL
    FROM sensor_calibrations WHERE sensor_id = :sensor
)
UPDATE sensor_readings AS r
SET value = CASE WHEN s.gain IS NULL THEN coalesce(r.raw_value, r.value)
                 ELSE s.gain * coalesce(r.raw_value, r.value) + s."offset" END,
    raw_value = CASE WHEN s.gain IS NULL THEN r.raw_value
                     ELSE coalesce(r.raw_value, r.value) END
FROM steps AS s
WHERE r.sensor_id = :sensor AND r.ts >= :start AND r.ts < :end
    AND r.ts >= s.lo AND r.ts < s.hi AND s.lo < :end AND s.hi > :start
    AND CASE WHEN s.gain IS NULL
             THEN r.raw_value IS NOT NULL AND r.value IS DISTINCT FROM r.raw_value
             ELSE r.raw_value IS NULL OR r.value IS DISTINCT FROM s.gain * r.raw_value + s."offset"
        END
"""

# Step 3: every hour of the chunk that has readings, from its readings; an hour whose
# totals are unchanged is not written. Returns (rollups written, readings in the hours).
_ROLL_UP = """
WITH hours AS (
    SELECT sensor_id, date_trunc('hour', ts, 'UTC') AS bucket,
           count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
    FROM sensor_readings
    WHERE sensor_id = :sensor AND ts >= :hours_start AND ts < :hours_end
    GROUP BY 1, 2
), written AS (
    INSERT INTO reading_rollups_hourly AS h (sensor_id, bucket, count, sum, min, max)
    SELECT * FROM hours ORDER BY sensor_id, bucket
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET
        count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max
    WHERE (h.count, h.sum, h.min, h.max)
        IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.sum, EXCLUDED.min, EXCLUDED.max)
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT coalesce(sum(count), 0)::bigint FROM hours)
"""


class _Superseded(Exception):
    """The backfill row moved on without this run (another run of it, or it ended)."""


@dataclass(frozen=True)
class _Chunk:
    readings: int
    """Readings in the chunk's hours: what sizes the next chunk."""
    is_last: bool


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


async def backfill_calibration(ctx: dict[str, Any], backfill_id: str) -> str:
    """arq job: chunks for up to SLICE_S, then run again (same job id) until done; then the
    sensor's newest readings are cached again, as the backfill may have changed them."""
    jc = worker_context(ctx)
    backfill_uuid = uuid.UUID(backfill_id)
    async with jc.sessions() as session:
        try:
            outcome = await _run_slice(session, jc.settings, backfill_uuid)
        except _Superseded:
            return "superseded"
        except Exception as exc:
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                raise queue.run_again(5) from exc
            log.exception("backfill_failed", backfill_id=backfill_id)
            await _fail(session, backfill_uuid, f"unexpected error ({type(exc).__name__})")
            return "failed"
        if outcome == "again":
            raise queue.run_again()
        if outcome == "completed":
            await _recache(session, HotCache.of(jc.settings, jc.redis), backfill_uuid)
    return outcome


async def _run_slice(session: AsyncSession, settings: Settings, backfill_id: uuid.UUID) -> str:
    deadline = time.monotonic() + SLICE_S
    async with session.begin():
        backfill = await _lock(session, backfill_id)
        if backfill.status in _DONE:
            return f"skipped: {backfill.status}"
        if backfill.status == BackfillStatus.queued:
            backfill.status = BackfillStatus.running
            backfill.started_at = utcnow()
    window = FIRST_WINDOW
    while True:
        chunk = await retry_on_deadlock(
            functools.partial(_chunk, session, settings, backfill_id, window),
            on_retry=lambda: log.warning("backfill_deadlock_retry", backfill_id=str(backfill_id)),
        )
        if chunk.is_last:
            break
        growth = CHUNK_READINGS / chunk.readings if chunk.readings else MAX_GROWTH
        window = min(max(window * min(growth, MAX_GROWTH), HOUR), MAX_WINDOW)
        if time.monotonic() > deadline:
            return "again"
    async with session.begin():
        backfill = await _lock(session, backfill_id)
        if backfill.status != BackfillStatus.running:
            raise _Superseded
        backfill.status = BackfillStatus.completed
        backfill.finished_at = utcnow()
    log.info(
        "backfill_completed",
        backfill_id=str(backfill_id),
        readings_updated=backfill.readings_updated,
        hours_rolled_up=backfill.hours_rolled_up,
    )
    return "completed"


async def _chunk(
    session: AsyncSession, settings: Settings, backfill_id: uuid.UUID, window: timedelta
) -> _Chunk:
    """The next whole hours of the period, at most `window` of them, in one transaction."""
    async with session.begin():
        backfill = await _lock(session, backfill_id)
        if backfill.status != BackfillStatus.running:
            raise _Superseded
        # The retention deletes whole hours older than its horizon, a window at a time: an
        # hour there may be half deleted, and its rollup (kept for ever) must not be rebuilt
        # from what is left. The horizon moves on while a backfill runs, hence checked here.
        oldest = raw_horizon(utcnow(), settings.raw_retention_days) + HOUR
        start = max(backfill.done_until, oldest)
        if start >= backfill.end:
            backfill.done_until = backfill.end
            return _Chunk(0, is_last=True)
        hours_start = floor_hour(start)
        hours_end = min(hours_start + window, ceil_hour(backfill.end))
        end = min(hours_end, backfill.end)
        hours = {"sensor": backfill.sensor_id, "hours_start": hours_start, "hours_end": hours_end}
        await session.execute(text(_LOCK_ROLLUPS), hours)
        derived = await session.execute(
            text(_DERIVE), {"sensor": backfill.sensor_id, "start": start, "end": end}
        )
        written, readings = (await session.execute(text(_ROLL_UP), hours)).one()
        if derived.rowcount:  # type: ignore[attr-defined]
            # A meter's changed flows change its water use: the rollup integrates again.
            await flow_hours.mark_period(session, backfill.sensor_id, hours_start, hours_end)
        backfill.done_until = end
        backfill.readings_updated += derived.rowcount  # type: ignore[attr-defined]
        backfill.hours_rolled_up += written
    return _Chunk(readings, is_last=end >= backfill.end)


async def _lock(session: AsyncSession, backfill_id: uuid.UUID) -> CalibrationBackfill:
    found = await session.execute(
        select(CalibrationBackfill)
        .where(CalibrationBackfill.id == backfill_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    backfill = found.scalar_one_or_none()
    if backfill is None:  # its sensor (or site) was deleted
        raise _Superseded
    return backfill


async def _fail(session: AsyncSession, backfill_id: uuid.UUID, error: str) -> None:
    try:
        async with session.begin():
            backfill = await _lock(session, backfill_id)
            if backfill.status not in _DONE:
                backfill.status = BackfillStatus.failed
                backfill.error = error[:1000]
                backfill.finished_at = utcnow()
    except _Superseded:
        return


async def _recache(session: AsyncSession, cache: HotCache, backfill_id: uuid.UUID) -> None:
    """The sensor's newest readings as now stored, into the hot cache: merged by instant
    with what it holds (a stored value replaces a cached one of the same instant), so a
    newer reading a live batch cached meanwhile stays."""
    async with session.begin():
        sensor_id = (
            await session.execute(
                select(CalibrationBackfill.sensor_id).where(CalibrationBackfill.id == backfill_id)
            )
        ).scalar_one()
        newest = (
            await session.execute(
                select(SensorReading.ts, SensorReading.value, SensorReading.quality)
                .where(SensorReading.sensor_id == sensor_id)
                .order_by(SensorReading.ts.desc())
                .limit(RECENT)
            )
        ).all()
    if not newest:
        return
    times, values, qualities = (list(column) for column in zip(*newest, strict=True))
    n = len(newest)
    await cache.record(encode(Columns([sensor_id.bytes] * n, times, values, qualities, [None] * n)))


async def requeue_unfinished_backfills(ctx: dict[str, Any]) -> int:
    """Enqueue again every backfill still queued or running after a minute (a cron job): one
    whose request died between its commit and the enqueue, or whose queue entry Redis lost.
    A live one's duplicate is refused by arq (the job id is the backfill's id)."""
    jc = worker_context(ctx)
    async with jc.sessions() as session:
        ids = (
            (
                await session.execute(
                    select(CalibrationBackfill.id)
                    .where(
                        CalibrationBackfill.status.in_(
                            (BackfillStatus.queued, BackfillStatus.running)
                        ),
                        CalibrationBackfill.created_at
                        < utcnow() - timedelta(seconds=REQUEUE_AFTER_S),
                    )
                    .limit(100)
                )
            )
            .scalars()
            .all()
        )
    requeued = 0
    for backfill_id in ids:
        requeued += await queue.enqueue_backfill(jc.redis, backfill_id)
    return requeued
