"""Alerts (one row per occurrence of a condition), webhook subscriptions and deliveries."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ARRAY, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin
from irrigation.fleet.models import Versioned
from irrigation.pumps.models import PumpActivation


class AlertKind(StrEnum):
    sensor_out_of_band = "sensor_out_of_band"
    sensor_silent = "sensor_silent"
    pump_fault = "pump_fault"
    gateway_failure = "gateway_failure"
    quarantine_rate = "quarantine_rate"
    # The device boundary (pumps/jobs.py, pumps/reconcile.py).
    actuation_unconfirmed = "actuation_unconfirmed"
    stop_unconfirmed = "stop_unconfirmed"
    unexpected_run = "unexpected_run"
    # A schedule, rule, run request or webhook delivery of the site whose processing raised
    # (automation/failures.py, alerts/webhooks.py): backed off, the others went on.
    automation_failure = "automation_failure"
    # Flow supervision (pumps/supervision.py): a run stopped for its flow (`no_flow` and
    # `high_flow` latch the pump's fault too), and a water source leaking while idle.
    low_flow = "low_flow"
    no_flow = "no_flow"
    high_flow = "high_flow"
    leak = "leak"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class SubjectType(StrEnum):
    sensor = "sensor"
    pump = "pump"
    water_source = "water_source"
    site = "site"


class AlertStatus(StrEnum):
    raised = "raised"
    acknowledged = "acknowledged"
    cleared = "cleared"


class WebhookEvent(StrEnum):
    alert_raised = "alert.raised"
    alert_acknowledged = "alert.acknowledged"
    alert_cleared = "alert.cleared"
    ping = "ping"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class DeliveryError(StrEnum):
    """Why an attempt failed, as the delivery log shows it: a fixed class, never the
    receiver's text or the network's error message (the log must not turn webhooks into a
    way to read other hosts' answers or probe their ports)."""

    http_error = "http_error"
    """Answered, but not 2xx (redirects are not followed): see `last_status_code`."""
    timeout = "timeout"
    dns_error = "dns_error"
    forbidden_address = "forbidden_address"
    """The host resolved to an address webhooks may not reach."""
    connection_refused = "connection_refused"
    connect_error = "connect_error"
    tls_error = "tls_error"
    protocol_error = "protocol_error"
    """Something answered, but not HTTP."""
    network_error = "network_error"
    """The connection broke while sending or reading."""
    subscription_disabled = "subscription_disabled"
    error = "error"
    internal_error = "internal_error"
    """Sending or recording it raised here (our fault, not the receiver's): retried with
    the back-off like any failed attempt; the site gets an `automation_failure` alert."""


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


OPEN_SQL = "status <> 'cleared'"


class Alert(IdMixin, Base):
    """An occurrence of a condition: raised, maybe acknowledged, then cleared for good.
    When the condition comes back, it is a new alert (a new row)."""

    __tablename__ = "alerts"
    __table_args__ = (
        # At most one open alert per condition. `subject_id` is never null (a site-level
        # alert names the site itself), and the kind implies the subject type, so these
        # three columns are the condition's identity; evaluation inserts ON CONFLICT on it.
        Index(
            "uq_alerts_one_open",
            "site_id",
            "kind",
            "subject_id",
            unique=True,
            postgresql_where=text(OPEN_SQL),
        ),
        Index("ix_alerts_site_page", "site_id", "created_at", "id"),
        CheckConstraint(_one_of("kind", AlertKind), name="kind_known"),
        CheckConstraint(_one_of("severity", Severity), name="severity_known"),
        CheckConstraint(_one_of("subject_type", SubjectType), name="subject_type_known"),
        CheckConstraint(_one_of("status", AlertStatus), name="status_known"),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    subject_type: Mapped[str] = mapped_column(String(16))
    # Not a foreign key (it names a sensor, a pump or the site): a deleted subject's alert
    # clears at the next evaluation, and its history stays.
    subject_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(1000))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)
    raised_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), default=None)
    cleared_at: Mapped[datetime | None] = mapped_column(default=None)
    # When the condition was last observed to hold.
    last_seen_at: Mapped[datetime]


class WebhookSubscription(IdMixin, Versioned, Base):
    __tablename__ = "webhook_subscriptions"
    __table_args__ = (Index("ix_webhook_subscriptions_site_page", "site_id", "created_at", "id"),)

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    # Kept in clear: signing needs it (a hash could not sign). Shown once, at creation.
    secret: Mapped[str] = mapped_column(String(64))
    # Event names this subscription wants; empty means every event.
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)), default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    description: Mapped[str | None] = mapped_column(String(500), default=None)


class WebhookDelivery(IdMixin, Base):
    """One event for one subscription, and how sending it went (the delivery log)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The due scan of the delivery cron: only pending rows, oldest due first.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_subscription_page", "subscription_id", "created_at", "id"),
        # The alert evaluation's scan of deliveries that failed here (normally none).
        Index(
            "ix_webhook_deliveries_internal_error",
            "site_id",
            postgresql_where=text("last_error = 'internal_error'"),
        ),
        CheckConstraint(_one_of("status", DeliveryStatus), name="status_known"),
    )

    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


# The gateway-failure alert looks for recent failed activations of every site every few
# seconds (every errored activation has `stopped_at`); this index keeps that a small range
# scan. Declared here, on the pumps' table, because the alert scan is its only reader.
Index(
    "ix_pump_activations_errors",
    PumpActivation.stopped_at,
    postgresql_where=text("status = 'failed' OR error IS NOT NULL"),
)
