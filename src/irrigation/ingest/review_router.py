"""HTTP routes for reviewing ingestion: the quarantine and the job history."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from irrigation.auth.deps import IngestPrincipal, ReadOrIngestPrincipal, ReadPrincipal
from irrigation.common.deps import SettingsDep
from irrigation.common.openapi import problems
from irrigation.common.pagination import Page, PageParams, page_params
from irrigation.db import SessionDep
from irrigation.ingest import review
from irrigation.ingest.models import (
    JobSource,
    JobStatus,
    QuarantineReason,
    ReviewStatus,
)
from irrigation.ingest.router import CacheDep
from irrigation.ingest.schemas import (
    ApprovalOut,
    ApprovedReading,
    IngestionJobOut,
    QuarantineCorrection,
    QuarantinedReadingOut,
    ReviewIds,
    ReviewResults,
)
from irrigation.ingest.service import job_out

router = APIRouter(prefix="/v1", tags=["readings"])

Params = Annotated[PageParams, Depends(page_params)]


# Quarantine ----------------------------------------------------------------------------


@router.get(
    "/quarantine",
    response_model=Page[QuarantinedReadingOut],
    responses=problems(),
    summary="Quarantined items of the caller's site, oldest first",
)
async def list_quarantine(
    session: SessionDep,
    who: ReadPrincipal,
    params: Params,
    reason: Annotated[QuarantineReason | None, Query()] = None,
    job_id: Annotated[uuid.UUID | None, Query()] = None,
    review_status: Annotated[ReviewStatus | None, Query()] = None,
) -> Page[QuarantinedReadingOut]:
    rows, cursor = await review.list_quarantine(
        session, who.site_id, params, reason=reason, job_id=job_id, review_status=review_status
    )
    return Page(items=[QuarantinedReadingOut.model_validate(r) for r in rows], next_cursor=cursor)


@router.post(
    "/quarantine/approve",
    response_model=ReviewResults,
    responses=problems(413),
    summary="Approve up to 500 quarantined items as they are",
    description=(
        "Each id on its own, in its own transaction; `status` says what happened to it: "
        "`approved`, `still_invalid` (with the reason in `detail`), `already_reviewed` or "
        "`not_found`. Send corrections through the single-item route."
    ),
)
async def approve_quarantined_items(
    body: ReviewIds,
    session: SessionDep,
    settings: SettingsDep,
    cache: CacheDep,
    who: IngestPrincipal,
) -> ReviewResults:
    results = await review.approve_many(
        session, settings, cache, who.site_id, body.ids, f"api_key:{who.key_id}"
    )
    return ReviewResults(results=results)


@router.post(
    "/quarantine/reject",
    response_model=ReviewResults,
    responses=problems(413),
    summary="Reject up to 500 quarantined items",
    description="Each id on its own: `rejected`, `already_reviewed` or `not_found`.",
)
async def reject_quarantined_items(
    body: ReviewIds, session: SessionDep, who: IngestPrincipal
) -> ReviewResults:
    return ReviewResults(
        results=await review.reject_many(session, who.site_id, body.ids, f"api_key:{who.key_id}")
    )


@router.post(
    "/quarantine/{item_id}/approve",
    response_model=ApprovalOut,
    responses=problems(404, 409, 413),
    summary="Approve a quarantined item, optionally with corrections",
    description=(
        "The item, with the corrections applied, is checked again exactly as ingestion checks "
        "it, except for `low_quality`: approving overrides the quality flag. It is then "
        "stored like any reading (rollups included). Still failing: 422 `still_invalid` with "
        "the `reason`. Already approved or rejected: 409 `already_reviewed`."
    ),
)
async def approve_quarantined_item(
    item_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    cache: CacheDep,
    who: IngestPrincipal,
    body: Annotated[QuarantineCorrection | None, Body()] = None,
) -> ApprovalOut:
    approval = await review.approve(
        session, settings, cache, who.site_id, item_id, body, f"api_key:{who.key_id}"
    )
    return ApprovalOut(
        **QuarantinedReadingOut.model_validate(approval.item).model_dump(),
        reading=ApprovedReading(
            sensor_id=approval.reading.sensor_id,
            ts=approval.reading.ts,
            value=approval.value,
            quality=approval.reading.quality,
            raw_value=approval.reading.value,
        ),
        inserted=approval.inserted,
    )


@router.post(
    "/quarantine/{item_id}/reject",
    response_model=QuarantinedReadingOut,
    responses=problems(404, 409),
    summary="Reject a quarantined item: it stays out of the readings",
)
async def reject_quarantined_item(
    item_id: uuid.UUID, session: SessionDep, who: IngestPrincipal
) -> QuarantinedReadingOut:
    return QuarantinedReadingOut.model_validate(
        await review.reject(session, who.site_id, item_id, f"api_key:{who.key_id}")
    )


# Jobs ----------------------------------------------------------------------------------


@router.get(
    "/ingest/jobs",
    response_model=Page[IngestionJobOut],
    responses=problems(),
    summary="Ingestion jobs of the caller's site, newest first",
)
async def list_ingestion_jobs(
    session: SessionDep,
    who: ReadOrIngestPrincipal,
    params: Params,
    source: Annotated[JobSource | None, Query()] = None,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Page[IngestionJobOut]:
    rows, cursor = await review.list_jobs(
        session, who.site_id, params, source=source, status=status
    )
    return Page(items=[job_out(r) for r in rows], next_cursor=cursor)


@router.get(
    "/ingest/jobs/{job_id}",
    response_model=IngestionJobOut,
    responses=problems(404),
    summary="One ingestion job: status, counts, processing time and success rate",
)
async def get_ingestion_job(
    job_id: uuid.UUID, session: SessionDep, who: ReadOrIngestPrincipal
) -> IngestionJobOut:
    return job_out(await review.get_job(session, who.site_id, job_id))
