"""Ingestion use cases: a validated batch in one transaction, job bookkeeping, latest value."""

import dataclasses
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy import ARRAY, Uuid, any_, bindparam, func, insert, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import feed
from irrigation.auth.models import Site
from irrigation.common import idempotency
from irrigation.common.clock import utcnow
from irrigation.common.errors import NotFound
from irrigation.common.idempotency import IdempotentRequest, StoredAnswer
from irrigation.common.retry import retry_on_deadlock
from irrigation.common.shaping import columns_of
from irrigation.fleet.models import Sensor
from irrigation.fleet.service import range_of
from irrigation.ingest import flow_hours, store
from irrigation.ingest.cache import HotCache, Live
from irrigation.ingest.calibration import steps_of
from irrigation.ingest.models import (
    IngestionJob,
    JobSource,
    JobStatus,
    QuarantinedReading,
    ReviewStatus,
    SensorReading,
)
from irrigation.ingest.rows import Rows, encode
from irrigation.ingest.schemas import IngestionJobOut, IngestResult, QuarantinedItem
from irrigation.ingest.validation import (
    Checked,
    Parsed,
    Rejected,
    SensorSpec,
    check_items,
    sensor_ids,
)
from irrigation.quotas import service as quotas
from irrigation.quotas.schemas import Quota
from irrigation.settings import Settings

DEADLOCK_RETRIES = Counter(
    "irrigation_ingest_deadlock_retries_total",
    "Ingestion transactions run again after PostgreSQL chose them as a deadlock's victim",
    ["source"],
)
log = structlog.get_logger(__name__)


def deadlock_retried(source: str) -> None:
    DEADLOCK_RETRIES.labels(source).inc()
    log.warning("ingest_deadlock_retry", source=source)


# The batch's sensors of the caller's site, with their calibration steps (one scan of the
# steps' (sensor_id, effective_from) key for the batch's ids, grouped; unordered: `steps_of`
# sorts them). Text, built once: as a select() it cost ~1 ms a batch more in SQLAlchemy
# (building, cache key, typed array results) than the statement without the steps.
_SENSOR_SPECS = text("""
SELECT s.id, s.unit, s.kind, s.min_value, s.max_value, s.zone_id,
       st.starts, st.gains, st.offsets,
       (s.pump_id IS NOT NULL OR s.water_source_id IS NOT NULL) AS meter
FROM sensors AS s LEFT JOIN (
    SELECT sensor_id, array_agg(effective_from) AS starts, array_agg(gain) AS gains,
           array_agg("offset") AS offsets
    FROM sensor_calibrations WHERE sensor_id = ANY(:ids) GROUP BY sensor_id
) AS st ON st.sensor_id = s.id
WHERE s.site_id = :site_id AND s.id = ANY(:ids)
""").bindparams(bindparam("ids", type_=ARRAY(Uuid)), bindparam("site_id", type_=Uuid))


async def sensor_specs(
    session: AsyncSession, site_id: uuid.UUID, sensor_ids: set[uuid.UUID]
) -> dict[uuid.UUID, SensorSpec]:
    """The caller's own sensors among these ids, each with its calibration history; any
    other id is simply unknown. Columns, not ORM objects: a batch names ~100 sensors and
    needs a few fields of each. The calibrations come in the same statement: no round trip
    more per batch, and no cache that a step just made would have to wait out. Measured on
    100 sensors (bench/calibration.py): as fast as the lookup before calibration when no
    sensor has a step, 0.9 ms more a batch with two steps each."""
    if not sensor_ids:
        return {}
    # One array parameter: `IN` would expand to ~100 parameters, each sent apart.
    rows = (
        await session.execute(_SENSOR_SPECS, {"ids": list(sensor_ids), "site_id": site_id})
    ).all()
    calibrations = steps_of([(row[0], row[6], row[7], row[8]) for row in rows if row[6]])
    return {
        sensor_id: SensorSpec(
            unit,
            *range_of(kind, low, high),
            zone_id=zone_id,
            calibration=calibrations.get(sensor_id),
            meter=meter,
        )
        for sensor_id, unit, kind, low, high, zone_id, *_, meter in rows
    }


async def check(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    parsed: Parsed,
    offset: int = 0,
) -> Checked:
    ids = sensor_ids(parsed)
    specs = await sensor_specs(session, site_id, ids)
    retention = timedelta(days=settings.raw_retention_days)
    checked = check_items(parsed, specs, utcnow(), retention, offset)
    # From the batch's ~100 sensors, not its 10,000 items: a zone whose items were all
    # quarantined is asked to look again for nothing, which costs less than the pass.
    sensor_zones = {sensor_id: spec.zone_id for sensor_id, spec in specs.items()}
    zones = {zone_id for zone_id in sensor_zones.values() if zone_id is not None}
    meters = frozenset(sensor_id for sensor_id, spec in specs.items() if spec.meter)
    return dataclasses.replace(checked, zone_ids=zones, sensor_zones=sensor_zones, meters=meters)


@dataclass(frozen=True)
class Written:
    inserted: int
    duplicates: int
    stored: Rows
    """The accepted readings as the database now holds them, for the hot cache: a
    duplicate may carry another value than the reading it lost to."""
    not_kept: int
    """Bad items refused without being kept for review (the pending quarantine is full)."""


async def keep_for_review(
    session: AsyncSession, settings: Settings, site_id: uuid.UUID, rejected: list[Rejected]
) -> tuple[list[Rejected], int]:
    """The bad items to quarantine, and how many are refused without being kept: those
    beyond the room left under the site's quota of items awaiting review, first ones
    first. Counted without a lock, so batches of one site racing past the quota may keep
    one batch each too many; the count (an index-only scan of at most the quota's rows)
    runs only for a batch with bad items."""
    if not rejected:
        return rejected, 0
    limit = await quotas.limit_of(session, settings, site_id, Quota.max_pending_quarantine)
    pending = select(QuarantinedReading.id).where(
        QuarantinedReading.site_id == site_id,
        QuarantinedReading.review_status == ReviewStatus.pending,
    )
    used = (
        await session.execute(select(func.count()).select_from(pending.limit(limit).subquery()))
    ).scalar_one()
    room = max(limit - used, 0)
    return rejected[:room], max(len(rejected) - room, 0)


async def write_checked(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    job_id: uuid.UUID,
    checked: Checked,
) -> Written:
    """Readings, quarantine and rollups within the caller's transaction; the rollups last,
    as the statement that locks what concurrent batches of these sensors wait for."""
    inserted = await store.insert_readings(session, encode(checked.accepted))
    kept, not_kept = await keep_for_review(session, settings, site_id, checked.rejected)
    await store.insert_quarantine(session, site_id, job_id, kept)
    await store.roll_up(session, inserted)
    await flow_hours.mark(session, inserted.stored, checked.meters)
    duplicates = len(checked.accepted) - inserted.count
    return Written(inserted.count, duplicates, inserted.stored, not_kept)


@dataclass(frozen=True)
class Fresh:
    """A committed batch, for the hot cache: its readings as stored, the zones to mark, and
    its live events (the readings and the job), which ride the cache's one round trip."""

    rows: Rows
    zone_ids: set[uuid.UUID]
    live: Live
    metered: bool = False
    """Readings of an attached flow meter were stored: the site's flows are judged."""


async def ingest_batch(
    session: AsyncSession,
    settings: Settings,
    cache: HotCache,
    site_id: uuid.UUID,
    parsed: Parsed,
    idem: IdempotentRequest | None,
    source: JobSource = JobSource.api,
) -> StoredAnswer:
    """Acknowledged means durable: the answer is built only after the commit. The one way
    in for live readings: `POST /v1/readings` and the MQTT bridge (`source`)."""
    started = time.perf_counter()
    mode = store.CopyMode.bare

    async def ingest_once() -> tuple[StoredAnswer, Fresh | None]:
        nonlocal mode
        while True:
            try:
                return await _ingest_once(
                    session, settings, site_id, parsed, idem, started, mode, source
                )
            except store.StoredAlready:
                # A batch (partly) sent before: again, merged with what is stored.
                mode = store.CopyMode.merge

    # Two batches touching the same sensors can still deadlock on rollup rows; PostgreSQL
    # picks a victim, which simply tries again.
    answer, fresh = await retry_on_deadlock(
        ingest_once, on_retry=lambda: deadlock_retried(source.value)
    )
    if fresh is not None:
        await cache.record(fresh.rows, fresh.zone_ids, settings.evaluation_delay_s, live=fresh.live)
        if fresh.metered:
            await cache.supervise_flow(site_id)
    return answer


def job_event(session: AsyncSession, job: IngestionJob) -> None:
    """The job's live event (IngestionJobOut), published if the transaction commits: on
    creation and on every change of an import. A job of no site has no feed."""
    if job.site_id is not None:
        data = job_out(job).model_dump(mode="json")
        feed.emit(session, feed.EventType.ingest_job, job.site_id, data)


async def _ingest_once(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    parsed: Parsed,
    idem: IdempotentRequest | None,
    started: float,
    mode: store.CopyMode,
    source: JobSource,
) -> tuple[StoredAnswer, Fresh | None]:
    """The answer, and the batch as stored, for the cache (None for a replayed answer)."""
    async with idempotency.begin(session, idem, settings.idempotency_ttl_s) as claim:
        if claim.replay is not None:
            return claim.replay, None
        checked = await check(session, settings, site_id, parsed)
        started_at = utcnow()
        inserted = await store.insert_readings(session, encode(checked.accepted), mode)
        kept, not_kept = await keep_for_review(session, settings, site_id, checked.rejected)
        result = IngestResult(
            job_id=uuid.uuid4(),
            total=len(parsed),
            inserted=inserted.count,
            duplicates=len(checked.accepted) - inserted.count,
            quarantined=len(checked.rejected),
            quarantine_not_kept=not_kept,
            quarantine=[
                QuarantinedItem(index=r.index, reason=r.reason, detail=r.detail)
                for r in checked.rejected
            ],
        )
        # The job row once, with its final counts (no INSERT then UPDATE), and before the
        # quarantined items, which reference it.
        job: dict[str, Any] = {
            "id": result.job_id,
            "site_id": site_id,
            "source": source,
            "status": JobStatus.completed,
            "total": result.total,
            "processed": result.total,
            "inserted": result.inserted,
            "duplicates": result.duplicates,
            "quarantined": result.quarantined,
            "quarantine_not_kept": not_kept,
            "created_at": started_at,
            "started_at": started_at,
            "finished_at": utcnow(),
            "processing_time_ms": round((time.perf_counter() - started) * 1000),
        }
        await session.execute(insert(IngestionJob).values(job))
        await store.insert_quarantine(session, site_id, result.job_id, kept)
        answer = StoredAnswer(200, result.model_dump(mode="json"), {})
        await claim.store(answer)
        # Last, right before the COMMIT: the rollup rows and sensors it locks are what
        # every concurrent batch of these sensors waits for.
        await store.roll_up(session, inserted)
        await flow_hours.mark(session, inserted.stored, checked.meters)
    # The job's event rides the cache's round trip after the commit, with the readings'.
    event = job_out(IngestionJob(**job)).model_dump(mode="json")
    live = Live(site_id, checked.sensor_zones, job=event)
    metered = bool(checked.meters) and inserted.count > 0
    return answer, Fresh(inserted.stored, checked.zone_ids, live, metered)


async def existing_sites(session: AsyncSession, site_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Those of these ids that name a site."""
    if not site_ids:
        return set()
    rows = await session.execute(
        select(Site.id).where(Site.id == any_(literal(list(site_ids), ARRAY(Uuid))))
    )
    return set(rows.scalars())


async def quarantine_all(
    session: AsyncSession, site_id: uuid.UUID | None, rejected: list[Rejected], source: JobSource
) -> uuid.UUID:
    """Items that cannot be checked, quarantined under a job of their own in one transaction:
    MQTT messages whose topic names no known site (`site_id` None: no site's API shows them,
    operators find them by `site_id IS NULL`), or that the database refused. Returns the
    job's id."""
    job_id = uuid.uuid4()
    now = utcnow()
    job = {
        "id": job_id,
        "site_id": site_id,
        "source": source,
        "status": JobStatus.completed,
        "total": len(rejected),
        "processed": len(rejected),
        "quarantined": len(rejected),
        "created_at": now,
        "started_at": now,
        "finished_at": now,
        "processing_time_ms": 0,
    }
    async with session.begin():
        await session.execute(insert(IngestionJob).values(job))
        await store.insert_quarantine(session, site_id, job_id, rejected)
        job_event(session, IngestionJob(**job, inserted=0, duplicates=0, quarantine_not_kept=0))
    return job_id


async def latest(
    session: AsyncSession, cache: HotCache, site_id: uuid.UUID, sensor_id: uuid.UUID
) -> tuple[list[dict[str, Any]], str]:
    """The newest values (newest first): from Redis, else from the database."""
    owned = await session.execute(
        select(Sensor.id).where(Sensor.id == sensor_id, Sensor.site_id == site_id)
    )
    if owned.first() is None:
        raise NotFound("sensor not found")
    cached = await cache.recent(sensor_id)
    if cached is not None:
        return cached, "cache"
    rows = await session.execute(
        select(SensorReading.ts, SensorReading.value, SensorReading.quality)
        .where(SensorReading.sensor_id == sensor_id)
        .order_by(SensorReading.ts.desc())
        .limit(60)
    )
    return [
        {"ts": ts.isoformat(), "value": value, "quality": quality} for ts, value, quality in rows
    ], "database"


def job_out(job: IngestionJob) -> IngestionJobOut:
    return IngestionJobOut.model_validate(
        {**columns_of(job, IngestionJobOut, "success_rate"), "success_rate": success_rate(job)}
    )


def success_rate(job: IngestionJob) -> float | None:
    if not job.processed:
        return None
    return round((job.inserted + job.duplicates) / job.processed, 4)
