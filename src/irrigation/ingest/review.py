"""Reviewing ingestion: the quarantine (list, approve with corrections, reject) and the jobs."""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.common import repository as repo
from irrigation.common.clock import utcnow
from irrigation.common.errors import DomainError, NotFound
from irrigation.common.pagination import PageParams, page_of, paginate
from irrigation.ingest import flow_hours, store
from irrigation.ingest.cache import HotCache, Live
from irrigation.ingest.models import (
    IngestionJob,
    JobSource,
    JobStatus,
    QuarantinedReading,
    QuarantineReason,
    ReviewStatus,
)
from irrigation.ingest.rows import Columns, encode
from irrigation.ingest.schemas import (
    QuarantineCorrection,
    ReadingIn,
    ReviewOutcome,
    ReviewResult,
)
from irrigation.ingest.service import sensor_specs
from irrigation.ingest.validation import (
    Rejected,
    SensorSpec,
    check_items,
    parse_items,
    sensor_ids,
)
from irrigation.settings import Settings


class AlreadyReviewed(DomainError):
    status, code, title = 409, "already_reviewed", "Already reviewed"

    def __init__(self, item_id: uuid.UUID, review_status: str) -> None:
        super().__init__(
            f"quarantined item {item_id} is already {review_status}",
            review_status=review_status,
        )


class StillInvalid(DomainError):
    status, code, title = 422, "still_invalid", "Still invalid"

    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}", reason=reason.value)


@dataclass(frozen=True)
class Approval:
    item: QuarantinedReading
    reading: ReadingIn
    """The item as corrected: what the sensor sent (or the reviewer wrote)."""
    value: float
    """The value stored: the reading's, calibrated with the sensor's calibration of its ts."""
    inserted: bool


# Lists ---------------------------------------------------------------------------------


async def list_quarantine(
    session: AsyncSession,
    site_id: uuid.UUID,
    params: PageParams,
    *,
    reason: QuarantineReason | None = None,
    job_id: uuid.UUID | None = None,
    review_status: ReviewStatus | None = None,
) -> tuple[list[QuarantinedReading], str | None]:
    """Oldest first, like every other list: a review queue worked through in arrival order."""
    filters = []
    if reason is not None:
        filters.append(QuarantinedReading.reason == reason.value)
    if job_id is not None:
        filters.append(QuarantinedReading.job_id == job_id)
    if review_status is not None:
        filters.append(QuarantinedReading.review_status == review_status.value)
    return await repo.list_owned(session, QuarantinedReading, site_id, params, *filters)


async def list_jobs(
    session: AsyncSession,
    site_id: uuid.UUID,
    params: PageParams,
    *,
    source: JobSource | None = None,
    status: JobStatus | None = None,
) -> tuple[list[IngestionJob], str | None]:
    """Newest first: the question is almost always "how did the last uploads go?"."""
    stmt = select(IngestionJob).where(IngestionJob.site_id == site_id)
    if source is not None:
        stmt = stmt.where(IngestionJob.source == source.value)
    if status is not None:
        stmt = stmt.where(IngestionJob.status == status.value)
    stmt = paginate(stmt, IngestionJob.created_at, IngestionJob.id, params, descending=True)
    return page_of((await session.execute(stmt)).scalars().all(), params)


async def get_job(session: AsyncSession, site_id: uuid.UUID, job_id: uuid.UUID) -> IngestionJob:
    return await repo.get_owned(session, IngestionJob, site_id, job_id)


# Review --------------------------------------------------------------------------------


async def approve(
    session: AsyncSession,
    settings: Settings,
    cache: HotCache,
    site_id: uuid.UUID,
    item_id: uuid.UUID,
    correction: QuarantineCorrection | None,
    reviewer: str,
) -> Approval:
    """Check the item again, with the corrections, exactly as ingestion does, and store it
    through the same statement (so the hourly rollup and last_seen_at follow).

    The job that quarantined the item keeps its counts: they record what ingestion
    decided, and the review is recorded on the item itself."""
    async with session.begin():
        item = await _lock_pending(session, site_id, item_id)
        reading, accepted, spec = await _recheck(session, settings, site_id, item.raw, correction)
        written = await store.write_readings(session, encode(accepted))
        if spec.meter:
            await flow_hours.mark(session, written.stored, {reading.sensor_id})
        inserted = written.count == 1
        item.review_status = ReviewStatus.approved
        item.reviewed_at = utcnow()
        item.reviewed_by = reviewer
        if correction is not None:
            item.correction = correction.model_dump(mode="json", exclude_none=True) or None
        await session.flush()
    if inserted:  # a duplicate is not what the database holds: keep it out of the cache
        # Its live event only if it is now the sensor's newest reading (cache.py).
        live = Live(site_id, {reading.sensor_id: spec.zone_id})
        await cache.record(written.stored, live=live)
    return Approval(item, reading, accepted.values[0], inserted)


async def reject(
    session: AsyncSession, site_id: uuid.UUID, item_id: uuid.UUID, reviewer: str
) -> QuarantinedReading:
    async with session.begin():
        item = await _lock_pending(session, site_id, item_id)
        item.review_status = ReviewStatus.rejected
        item.reviewed_at = utcnow()
        item.reviewed_by = reviewer
        await session.flush()
    return item


async def approve_many(
    session: AsyncSession,
    settings: Settings,
    cache: HotCache,
    site_id: uuid.UUID,
    ids: list[uuid.UUID],
    reviewer: str,
) -> list[ReviewResult]:
    """One transaction per item: one item that fails never holds back the others. An id
    sent twice is approved once, then already_reviewed."""
    results = []
    for item_id in ids:
        try:
            approval = await approve(session, settings, cache, site_id, item_id, None, reviewer)
        except (StillInvalid, AlreadyReviewed, NotFound) as exc:
            results.append(_failed(item_id, exc))
            continue
        detail = None if approval.inserted else "a reading at this ts was already stored"
        results.append(ReviewResult(id=item_id, status=ReviewOutcome.approved, detail=detail))
    return results


async def reject_many(
    session: AsyncSession, site_id: uuid.UUID, ids: list[uuid.UUID], reviewer: str
) -> list[ReviewResult]:
    results = []
    for item_id in ids:
        try:
            await reject(session, site_id, item_id, reviewer)
        except (AlreadyReviewed, NotFound) as exc:
            results.append(_failed(item_id, exc))
            continue
        results.append(ReviewResult(id=item_id, status=ReviewOutcome.rejected))
    return results


_OUTCOMES: dict[type[DomainError], ReviewOutcome] = {
    StillInvalid: ReviewOutcome.still_invalid,
    AlreadyReviewed: ReviewOutcome.already_reviewed,
    NotFound: ReviewOutcome.not_found,
}


def _failed(item_id: uuid.UUID, exc: StillInvalid | AlreadyReviewed | NotFound) -> ReviewResult:
    return ReviewResult(id=item_id, status=_OUTCOMES[type(exc)], detail=exc.detail)


async def _lock_pending(
    session: AsyncSession, site_id: uuid.UUID, item_id: uuid.UUID
) -> QuarantinedReading:
    """The item, locked until the transaction ends: of two reviewers acting at once, the
    second waits and then sees it reviewed. Another site's item is simply not found."""
    stmt = (
        select(QuarantinedReading)
        .where(QuarantinedReading.id == item_id, QuarantinedReading.site_id == site_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    item = (await session.execute(stmt)).scalar_one_or_none()
    if item is None:
        raise NotFound("quarantined item not found")
    if item.review_status != ReviewStatus.pending:
        raise AlreadyReviewed(item_id, item.review_status)
    return item


async def _recheck(
    session: AsyncSession,
    settings: Settings,
    site_id: uuid.UUID,
    raw: Any,
    correction: QuarantineCorrection | None,
) -> tuple[ReadingIn, Columns, SensorSpec]:
    """The item as corrected, the same checked again (its value calibrated), and its
    sensor as checked."""
    corrected = dict(raw) if isinstance(raw, dict) else {}
    if correction is not None:
        corrected |= correction.model_dump(mode="json", exclude_none=True)
    parsed = parse_items([corrected])
    ids = sensor_ids(parsed)
    specs = await sensor_specs(session, site_id, ids)
    checked = check_items(
        parsed,
        specs,
        utcnow(),
        timedelta(days=settings.raw_retention_days),
        # Approving is the human override of the quality flag: a low-quality reading is
        # stored as sent, its quality kept for whoever reads it. Every other check stands,
        # since the sensor's range, unit and the time window protect the data, not taste.
        min_quality=0,
    )
    if checked.rejected:
        first: Rejected = checked.rejected[0]
        raise StillInvalid(first.reason, first.detail)
    (item,) = parsed
    reading = cast(ReadingIn, item)
    return reading, checked.accepted, specs[reading.sensor_id]
