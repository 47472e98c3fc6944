"""Readings, their hourly rollups, quarantined items and ingestion jobs."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin


class SensorReading(Base):
    """One value of one sensor at one instant. The key is (sensor_id, ts): a re-sent reading
    is a duplicate, not a second row; it also leads with sensor_id, the sharding key."""

    __tablename__ = "sensor_readings"
    __table_args__ = (PrimaryKeyConstraint("sensor_id", "ts"),)

    # No foreign key here (measured: its trigger probed `sensors` once per row, 41 % of
    # the batch statement's CPU). The rollup row written by the same statement references
    # the sensor, so a sensor with readings still cannot be deleted (409 in_use).
    sensor_id: Mapped[uuid.UUID] = mapped_column()
    ts: Mapped[datetime]
    # The calibrated value (the sensor's calibration in effect at `ts`), what every
    # aggregate, rule and alert reads; `raw_value` is what the sensor sent, NULL when no
    # calibration applied (then it is `value`): a reading without one costs no byte more.
    value: Mapped[float] = mapped_column(Double)
    quality: Mapped[int] = mapped_column(SmallInteger, default=100)
    raw_value: Mapped[float | None] = mapped_column(Double, default=None)


class ReadingRollupHourly(Base):
    """count/sum/min/max per sensor and UTC hour, kept by the statement that inserts
    readings, from the rows actually inserted (a duplicate never counts twice)."""

    __tablename__ = "reading_rollups_hourly"
    __table_args__ = (PrimaryKeyConstraint("sensor_id", "bucket"),)

    sensor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sensors.id", ondelete="RESTRICT"))
    bucket: Mapped[datetime]
    count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Double)
    min: Mapped[float] = mapped_column(Double)
    max: Mapped[float] = mapped_column(Double)


class PendingFlowHour(Base):
    """A UTC hour in which an attached flow meter (a flow sensor on a pump or a water
    source) got readings, or had them changed, since the water-use rollup last integrated
    it. Written in the transaction that writes the readings, deleted by the rollup when it
    has integrated the days around the hour again (wateruse/rollup.py)."""

    __tablename__ = "pending_flow_hours"
    __table_args__ = (PrimaryKeyConstraint("sensor_id", "hour"),)

    sensor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sensors.id", ondelete="CASCADE"))
    hour: Mapped[datetime]


class QuarantineReason(StrEnum):
    parse_error = "parse_error"
    unknown_sensor = "unknown_sensor"
    invalid_unit = "invalid_unit"
    out_of_range = "out_of_range"
    invalid_timestamp = "invalid_timestamp"
    low_quality = "low_quality"


class ReviewStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"


class JobSource(StrEnum):
    api = "api"
    import_ = "import"
    mqtt = "mqtt"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"


class IngestionJob(IdMixin, Base):
    __tablename__ = "ingestion_jobs"
    __table_args__ = (
        Index("ix_ingestion_jobs_site_page", "site_id", "created_at", "id"),
        # The quota's count of a site's unfinished imports: a site has a job per batch.
        Index(
            "ix_ingestion_jobs_unfinished_imports",
            "site_id",
            postgresql_where=text("source = 'import' AND status IN ('queued', 'running')"),
        ),
    )

    # None only for the MQTT bridge's job of messages whose topic names no known site.
    site_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    # Of `quarantined`, those refused without being kept: the site's pending quarantine was
    # at its quota (max_pending_quarantine).
    quarantine_not_kept: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    processing_time_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(1000), default=None)
    # For uploads: where the worker finds the file, and its format.
    file_path: Mapped[str | None] = mapped_column(String(1000), default=None)
    file_format: Mapped[str | None] = mapped_column(String(16), default=None)


class QuarantinedReading(IdMixin, Base):
    __tablename__ = "quarantined_readings"
    __table_args__ = (
        Index("ix_quarantined_readings_site_page", "site_id", "created_at", "id"),
        Index("ix_quarantined_readings_job", "job_id"),
        # The quota's count of a site's items awaiting review.
        Index(
            "ix_quarantined_readings_pending",
            "site_id",
            postgresql_where=text("review_status = 'pending'"),
        ),
        # The retention of reviewed items, oldest review first.
        Index(
            "ix_quarantined_readings_reviewed",
            "reviewed_at",
            postgresql_where=text("review_status <> 'pending'"),
        ),
    )

    # None for an MQTT message whose topic names no known site (its job's site is None too).
    site_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ingestion_jobs.id", ondelete="CASCADE"))
    item_index: Mapped[int] = mapped_column(Integer)
    raw: Mapped[Any] = mapped_column(JSONB)
    # Parsed fields where the item had them (None for a parse_error).
    sensor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(500))
    review_status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.pending)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Who decided (`api_key:<id>`) and the corrections an approval applied, for the audit.
    reviewed_by: Mapped[str | None] = mapped_column(String(100), default=None)
    correction: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
