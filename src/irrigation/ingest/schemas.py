"""API shapes of ingestion: the batch envelope, per-item results, jobs and quarantine."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from irrigation.ingest.models import JobSource, JobStatus, QuarantineReason, ReviewStatus

MAX_BATCH = 10_000


class ReadingsBatch(BaseModel):
    """The envelope only: each item is checked on its own, so one bad item never sinks the
    batch (it is quarantined with a reason instead)."""

    readings: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=(
            "1 to 10,000 items `{sensor_id, ts, value, unit?, quality?}`; `ts` with a time "
            "zone, `quality` 0-100 (default 100)."
        ),
    )


class ReadingIn(BaseModel):
    """One item, as a device sends it."""

    model_config = ConfigDict(extra="forbid")

    sensor_id: uuid.UUID
    ts: datetime
    value: float = Field(allow_inf_nan=False)
    unit: str | None = Field(default=None, max_length=16)
    quality: int = Field(default=100, ge=0, le=100)


class QuarantinedItem(BaseModel):
    index: int
    reason: QuarantineReason
    detail: str


class IngestResult(BaseModel):
    job_id: uuid.UUID
    total: int
    inserted: int
    duplicates: int
    quarantined: int
    quarantine: list[QuarantinedItem]


class IngestionJobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    source: JobSource
    status: JobStatus
    total: int
    processed: int
    inserted: int
    duplicates: int
    quarantined: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    processing_time_ms: int | None
    success_rate: float | None = Field(
        description="inserted + duplicates over processed items, 0-1; null before any."
    )
    error: str | None


class QuarantinedReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    job_id: uuid.UUID
    item_index: int
    raw: Any
    sensor_id: uuid.UUID | None
    reason: QuarantineReason
    detail: str
    review_status: ReviewStatus
    reviewed_at: datetime | None
    created_at: datetime


class LatestReading(BaseModel):
    sensor_id: uuid.UUID
    ts: datetime | None
    value: float | None
    quality: int | None
    recent: list[dict[str, Any]] = Field(
        description="Up to the last 60 values, newest first: `{ts, value}`."
    )
    source: str = Field(description="`cache` (Redis) or `database` (fallback).")
