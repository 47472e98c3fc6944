"""Automation tables: threshold rules, schedules, the run queue and the decisions log."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin
from irrigation.fleet.models import Versioned


class Retried:
    """A row whose processing raised: `failures` in a row, and not tried again before
    `retry_at` (automation/failures.py). Reset by the next attempt that goes through."""

    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    retry_at: Mapped[datetime | None] = mapped_column(default=None)


class ThresholdRule(Retried, IdMixin, Versioned, Base):
    """Water a zone when the average of its sensors falls below `start_below`.

    Hysteresis: once triggered the rule is disarmed until the average has risen above
    `stop_above`, so a noisy signal around the threshold asks for one run, not many."""

    __tablename__ = "threshold_rules"
    __table_args__ = (
        Index("ix_threshold_rules_site_page", "site_id", "created_at", "id"),
        Index("ix_threshold_rules_zone", "zone_id"),
        # The alert evaluation's scan of failing rows (normally none).
        Index("ix_threshold_rules_failing", "site_id", postgresql_where=text("failures > 0")),
        CheckConstraint("start_below < stop_above", name="hysteresis_order"),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zones.id", ondelete="RESTRICT"))
    # None: every enabled pump of the zone, one after another.
    pump_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pumps.id", ondelete="RESTRICT"), default=None, index=True
    )
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    sensor_kind: Mapped[str] = mapped_column(String(32), default="soil_moisture")
    window_s: Mapped[int] = mapped_column(Integer, default=900)
    # Stale data never drives watering: fewer readings in the window than this, or a newest
    # reading older than `max_age_s`, and the rule does nothing (decision `stale_sensor`).
    min_readings: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    max_age_s: Mapped[int] = mapped_column(Integer, default=900, server_default=text("900"))
    start_below: Mapped[float] = mapped_column(Float)
    stop_above: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(default=True)
    armed: Mapped[bool] = mapped_column(default=True)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(default=None)
    last_triggered_at: Mapped[datetime | None] = mapped_column(default=None)
    # The last reason a trigger was held back (pause, rain delay, stale data): logged once,
    # not per sweep. On the row, written with the decision under the rule's lock, so neither
    # a restarted worker nor a second one logs the same reason again.
    last_skip_reason: Mapped[str | None] = mapped_column(String(64), default=None)


class Schedule(Retried, IdMixin, Versioned, Base):
    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_site_page", "site_id", "created_at", "id"),
        Index("ix_schedules_zone", "zone_id"),
        Index("ix_schedules_due", "next_run_at", postgresql_where=text("enabled")),
        Index("ix_schedules_failing", "site_id", postgresql_where=text("failures > 0")),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zones.id", ondelete="RESTRICT"))
    pump_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pumps.id", ondelete="RESTRICT"), default=None, index=True
    )
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    cron: Mapped[str | None] = mapped_column(String(100), default=None)
    weekdays: Mapped[list[str] | None] = mapped_column(ARRAY(String(3)), default=None)
    start_times: Mapped[list[str] | None] = mapped_column(ARRAY(String(5)), default=None)
    duration_s: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(default=True)
    # How late a run may still start (waiting for a busy pump or the water source).
    max_delay_s: Mapped[int] = mapped_column(Integer, default=3600)
    skip_if_moisture_above: Mapped[float | None] = mapped_column(Float, default=None)
    # The moisture skip averages the readings at most this old; older ones are ignored.
    moisture_max_age_s: Mapped[int] = mapped_column(
        Integer, default=900, server_default=text("900")
    )
    skip_if_rain_delay: Mapped[bool] = mapped_column(default=True)
    skip_if_rain_forecast_mm: Mapped[float | None] = mapped_column(Float, default=None)
    next_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)


class RunStatus(StrEnum):
    waiting = "waiting"
    started = "started"
    skipped = "skipped"
    superseded = "superseded"
    cancelled = "cancelled"


# A Literal, not a StrEnum: a member named `replace` would shadow `str.replace`.
QueueMode = Literal["append", "front", "replace"]


class RunRequest(Retried, IdMixin, Base):
    """One wish for a pump run, waiting its turn: priority rank first, then position."""

    __tablename__ = "run_requests"
    __table_args__ = (
        Index(
            "ix_run_requests_waiting",
            "site_id",
            "rank",
            "position",
            postgresql_where=text("status = 'waiting'"),
        ),
        Index(
            "ix_run_requests_pump_waiting", "pump_id", postgresql_where=text("status = 'waiting'")
        ),
        Index("ix_run_requests_site_page", "site_id", "created_at", "id"),
        Index(
            "ix_run_requests_failing",
            "site_id",
            postgresql_where=text("failures > 0 AND status = 'waiting'"),
        ),
        Index(
            "ix_run_requests_resolved",
            "resolved_at",
            postgresql_where=text("status <> 'waiting'"),
        ),
        # A watering's runs (runqueue/waterings.py walks their chain; the API's filter).
        Index(
            "ix_run_requests_watering",
            "watering_id",
            postgresql_where=text("watering_id IS NOT NULL"),
        ),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zones.id", ondelete="CASCADE"))
    pump_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pumps.id", ondelete="CASCADE"))
    priority: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(SmallInteger)
    # Microseconds of the request time: `append` positive, `front` negated (goes first).
    position: Mapped[int] = mapped_column(BigInteger)
    queue: Mapped[str | None] = mapped_column(String(16), default=None)
    duration_s: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(500), default=None)
    origin: Mapped[str] = mapped_column(String(100))
    rule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("threshold_rules.id", ondelete="SET NULL"), default=None
    )
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), default=None
    )
    # Runs of one zone-wide request go one after another: this one waits for `after_id`.
    after_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("run_requests.id", ondelete="SET NULL"), default=None
    )
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.waiting)
    deadline: Mapped[datetime]
    activation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="SET NULL"), default=None
    )
    # Why it is waiting (pump_busy, cooldown, capacity, ...) or why it ended.
    last_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    # How many runs of its water source started ahead of it while it waited for flow
    # (runqueue/packing.py): at IRRIGATION_RUNQUEUE_MAX_BYPASS, nothing passes it any more.
    bypass_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # One automated watering (a schedule's or rule's, every pump and cycle of it) shares one
    # id; a person's request has none. `cycle` of `cycles` counts this pump's runs of it.
    watering_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    cycle: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    cycles: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    # Starts no sooner than this long after `after_id` ended (the soak between cycles).
    soak_s: Mapped[int] = mapped_column(default=0, server_default="0")


class Outcome(StrEnum):
    started = "started"
    deferred = "deferred"
    skipped = "skipped"
    superseded = "superseded"


class Reason(StrEnum):
    """Why a decision was taken, and why a run request waits or ended (`last_reason`)."""

    started = "started"
    superseded = "superseded"
    cancelled = "cancelled"
    # The run queue's: a request that cannot start yet, or never will.
    deadline_passed = "deadline_passed"
    queued_behind = "queued_behind"
    after_previous = "after_previous"
    # Cycle-and-soak: a cycle waits out the soak after the previous one; a cycle that was
    # skipped, superseded or cancelled ends the watering's later cycles.
    soaking = "soaking"
    watering_ended = "watering_ended"
    invalid = "invalid"
    # The pumps' refusals (their `code`), as a request's reason to wait.
    pump_busy = "pump_busy"
    cooldown = "cooldown"
    capacity = "capacity"
    fault = "fault"
    disabled = "disabled"
    source_halted = "source_halted"
    # The gates of every trigger, and what only a schedule checks.
    paused = "paused"
    rain_delay = "rain_delay"
    no_pump = "no_pump"
    already_queued = "already_queued"
    missed = "missed"
    soil_wet = "soil_wet"
    forecast_rain = "forecast_rain"
    water_level_zero = "water_level_zero"
    # A threshold rule's window has too few readings, or its newest is too old.
    stale_sensor = "stale_sensor"
    # Weather lockouts (a run waits): the forecast for the hour of the start is below the
    # zone's `min_temp_c`, above its `max_wind_kmh`, or missing with `hold`.
    freeze = "freeze"
    wind = "wind"
    forecast_unavailable = "forecast_unavailable"
    # The site's quota of waiting run requests (per pump or per site) is full.
    quota_exceeded = "quota_exceeded"
    # Processing the schedule, rule or request raised: tried again later (`retry_at`).
    row_failed = "row_failed"


class AutomationDecision(IdMixin, Base):
    """Why a zone did or did not water: one row per start, deferral, skip or supersede."""

    __tablename__ = "automation_decisions"
    __table_args__ = (
        Index("ix_automation_decisions_zone_page", "zone_id", "created_at", "id"),
        Index("ix_automation_decisions_site", "site_id"),
        Index("ix_automation_decisions_at", "at"),  # the history purge
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("zones.id", ondelete="CASCADE"))
    pump_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pumps.id", ondelete="SET NULL"), default=None
    )
    rule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("threshold_rules.id", ondelete="SET NULL"), default=None
    )
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), default=None
    )
    run_request_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("run_requests.id", ondelete="SET NULL"), default=None
    )
    activation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="SET NULL"), default=None
    )
    # The watering of the run request (no foreign key: a watering is an id, not a row).
    watering_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(1000))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
