"""API shapes of ingestion: the batch envelope, per-item results, jobs and quarantine."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import TypedDict

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


# Strict: a JSON string or boolean is the wrong type, not a number to coerce (`true` would
# otherwise be stored as 1.0 and `"80"` as quality 80). JSON integers still count as
# numbers for `value`. Sources without types (CSV) convert cells before validating.
Value = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Unit = Annotated[str | None, Field(max_length=16)]
Quality = Annotated[int, Field(ge=0, le=100, strict=True)]


@pydantic_dataclass(slots=True, config=ConfigDict(extra="forbid"))
class ReadingIn:
    """One item, as a device sends it. A slots dataclass, not a BaseModel: a batch makes
    10,000 of them, and parsing into these took 13 ms a batch instead of 17 - 20 (fewer
    objects per item for the allocator and the cyclic GC)."""

    sensor_id: uuid.UUID
    ts: datetime
    value: Value
    unit: Unit = None
    quality: Quality = 100


class WireReading(TypedDict):
    """`ReadingIn` as a whole batch is parsed first: a dict (pydantic-core builds those
    fastest), with the sensor id still text. A batch names ~100 sensors, so each distinct
    id becomes a UUID once, not once per item (validation.parse_batch). Extra keys are
    kept here, to be found in one pass over the batch: forbidding them item by item cost
    more than the pass. Any item that is not a clean reading (an extra key, an id that is
    not a UUID) sends the batch the item-by-item way, where it is that item's parse_error."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    sensor_id: str
    ts: datetime
    value: Value
    unit: NotRequired[Unit]
    quality: NotRequired[Quality]


WIRE_FIELDS = WireReading.__required_keys__ | WireReading.__optional_keys__


class QuarantinedItem(BaseModel):
    index: int
    reason: QuarantineReason
    detail: str


class ImportUpload(BaseModel):
    """A history file as a `multipart/form-data` body (the route streams it: this model only
    documents the form)."""

    file: bytes = Field(
        description="The NDJSON or CSV file. Its format is `format` if given, else the "
        "part's `Content-Type` (`application/x-ndjson`, `text/csv`), else its file name's "
        "extension (`.ndjson`, `.jsonl`, `.csv`)."
    )


class IngestResult(BaseModel):
    job_id: uuid.UUID
    total: int
    inserted: int
    duplicates: int
    quarantined: int
    quarantine_not_kept: int = Field(
        description="Of `quarantined`, the items refused without being kept for review: the "
        "site's items awaiting review had reached its quota `max_pending_quarantine`. They "
        "are listed in `quarantine` like the others; reviewing pending items makes room."
    )
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
    quarantine_not_kept: int = Field(
        description="Of `quarantined`, those refused without being kept for review (the "
        "site's pending quarantine was at its quota `max_pending_quarantine`)."
    )
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
    reviewed_by: str | None = Field(description="`api_key:<id>` of the reviewer.")
    correction: dict[str, Any] | None = Field(
        description="The corrections the approval applied (value, unit, ts), if any."
    )
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


# Quarantine review -----------------------------------------------------------------------

MAX_REVIEW_IDS = 500


class QuarantineCorrection(BaseModel):
    """Corrections applied to a quarantined item before it is checked again; omitted (or
    null) fields keep the item's own."""

    model_config = ConfigDict(extra="forbid")

    value: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    unit: str | None = Field(default=None, min_length=1, max_length=16)
    ts: datetime | None = Field(default=None, description="With a time zone.")


class ApprovedReading(BaseModel):
    sensor_id: uuid.UUID
    ts: datetime
    value: float = Field(description="As stored: calibrated, if the sensor has a calibration.")
    quality: int
    raw_value: float = Field(description="As sent (or corrected), before any calibration.")


class ApprovalOut(QuarantinedReadingOut):
    reading: ApprovedReading = Field(description="The reading as checked and stored.")
    inserted: bool = Field(
        description="false when a reading of this sensor at this ts was already stored: "
        "that one is kept and this approval counts as a duplicate."
    )


class ReviewIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_REVIEW_IDS)


class ReviewOutcome(StrEnum):
    approved = "approved"
    rejected = "rejected"
    still_invalid = "still_invalid"
    already_reviewed = "already_reviewed"
    not_found = "not_found"


class ReviewResult(BaseModel):
    id: uuid.UUID
    status: ReviewOutcome
    detail: str | None = None


class ReviewResults(BaseModel):
    results: list[ReviewResult] = Field(description="One per id, in the order sent.")
