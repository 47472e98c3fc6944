"""Calibration backfills: a sensor's period whose values are derived again from the raw
values with the calibrations in effect, and whose hourly rollups are rebuilt."""

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin


class BackfillStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"


class CalibrationBackfill(IdMixin, Base):
    __tablename__ = "calibration_backfills"
    __table_args__ = (
        Index("ix_calibration_backfills_site_page", "site_id", "created_at", "id"),
        # One unfinished backfill per sensor: a second one is refused (409) rather than
        # racing the first over the same rows. Also what the requeue cron scans.
        Index(
            "uq_calibration_backfills_one_unfinished",
            "sensor_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    sensor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sensors.id", ondelete="CASCADE"))
    # The period [start, end): `end` as requested, but never later than readings can be.
    start: Mapped[datetime]
    end: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=BackfillStatus.queued)
    # Progress: everything before this instant is done (committed chunk by chunk, so a
    # killed worker resumes here).
    done_until: Mapped[datetime]
    readings_updated: Mapped[int] = mapped_column(BigInteger, default=0)
    hours_rolled_up: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(1000), default=None)
