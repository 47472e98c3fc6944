"""Activations (one requested run each), their audit trail, the outbox and idempotency keys."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.clock import utcnow
from irrigation.common.orm import Base, IdMixin


class Priority(StrEnum):
    manual = "manual"
    emergency = "emergency"
    scheduled = "scheduled"
    threshold = "threshold"


class ActivationStatus(StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    completed = "completed"
    rejected = "rejected"
    expired = "expired"
    failed = "failed"
    aborted = "aborted"


ACTIVE = (ActivationStatus.queued, ActivationStatus.starting, ActivationStatus.running)

# What a device did not confirm: an activation's `error`, and the code a latched pump
# fault starts with (`code: detail`), which the alerts evaluation reads.
NOT_CONFIRMED = "not_confirmed"
STOP_UNCONFIRMED = "stop_unconfirmed"
# What the reconciliation found a device doing that no run of ours asked for.
UNEXPECTED_RUN = "unexpected_run"
# Flow supervision (pumps/supervision.py): a run's `stop_cause`, the `device_incidents`
# kind of the finding, and for the two that latch a fault, the fault's code.
LOW_FLOW = "low_flow"
NO_FLOW = "no_flow"
HIGH_FLOW = "high_flow"
FLOW_CAUSES = (LOW_FLOW, NO_FLOW, HIGH_FLOW)
# A run stopped because its water source was halted for a leak.
LEAK = "leak"
_ACTIVE_SQL = "status IN ('queued', 'starting', 'running')"


class PumpActivation(IdMixin, Base):
    __tablename__ = "pump_activations"
    __table_args__ = (
        # Invariant 1 enforced by the database too: one active activation per pump.
        Index(
            "uq_pump_activations_one_active",
            "pump_id",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
        ),
        Index(
            "ix_pump_activations_source_active",
            "water_source_id",
            postgresql_where=text(_ACTIVE_SQL),
        ),
        Index("ix_pump_activations_pump_page", "pump_id", "created_at", "id"),
        Index("ix_pump_activations_site_active", "site_id", postgresql_where=text(_ACTIVE_SQL)),
        # A pump's last measured runs, which its expected flow is learned from.
        Index(
            "ix_pump_activations_flow_measured",
            "pump_id",
            "stopped_at",
            postgresql_where=text("mean_flow_lpm IS NOT NULL"),
        ),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    # RESTRICT: a pump or water source with a history is disabled, not deleted (audit trail).
    pump_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pumps.id", ondelete="RESTRICT"))
    # Snapshot at request time: capacity is counted per water source.
    water_source_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("water_sources.id", ondelete="RESTRICT")
    )
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    duration_s: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(500), default=None)
    origin: Mapped[str] = mapped_column(String(100))
    command_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    requested_at: Mapped[datetime]
    start_deadline: Mapped[datetime]
    starting_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    # The start command's own auto-off time: the latest the device can run it, sent or not.
    auto_off_at: Mapped[datetime | None] = mapped_column(default=None)
    run_deadline: Mapped[datetime | None] = mapped_column(default=None)
    stop_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    stop_cause: Mapped[str | None] = mapped_column(String(32), default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    # The mean flow its pump's meter read after the settling time, for a run that ended
    # normally (not stopped for its flow): what the pump's expected flow is learned from.
    mean_flow_lpm: Mapped[float | None] = mapped_column(Float, default=None)


class ActivationEvent(IdMixin, Base):
    """Append-only: every transition of an activation, with when and why."""

    __tablename__ = "activation_events"
    __table_args__ = (Index("ix_activation_events_activation", "activation_id", "at", "id"),)

    activation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)


class OutboxJob(IdMixin, Base):
    """A job to enqueue, committed with the state it acts on (a crash cannot lose it).

    The worker deletes the row when it handles the job; the relay re-enqueues rows that
    are still here after a while (the enqueue after commit never happened): it claims
    them in one committed statement, then enqueues, so no row lock is held while it waits
    on Redis."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_created", "created_at"),)

    job: Mapped[str] = mapped_column(String(64))
    activation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="CASCADE"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a relay last took the row: another relay leaves it alone for the relay delay.
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)


class EndedRun(Base):
    """A run that ran and has ended, written with its last transition (pumps/live.py) and
    deleted by the water-use rollup once it has accounted the run's water (wateruse/).
    A row of its own rather than a scan of the activations: the rollup finds every ended
    run, however late it looks, without an index over the activations' stop times."""

    __tablename__ = "ended_runs"

    activation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="CASCADE"), primary_key=True
    )


class DeviceIncident(IdMixin, Base):
    """Something a device did that no run asked for: found by the reconciliation (a run
    with no active activation, which it halted: `unexpected_run`) or by flow supervision (a
    run whose flow was out of its band, which it stopped: `low_flow`, `no_flow`,
    `high_flow`, with the figures). Append-only; alerts raise on recent ones."""

    __tablename__ = "device_incidents"
    __table_args__ = (Index("ix_device_incidents_recent", "kind", "at"),)

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    pump_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pumps.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    # The device's own account: the command it ran, its fence, since when.
    command_id: Mapped[str | None] = mapped_column(String(100), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
