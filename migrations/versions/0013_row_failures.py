"""row failures: schedules, threshold rules and run requests count the failures of their
processing in a row and are not tried again before `retry_at`; the alert kind
`automation_failure`, and the partial indexes its evaluation scans

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 15:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration must not change when the code does.
ALERT_KINDS = (
    "sensor_out_of_band",
    "sensor_silent",
    "pump_fault",
    "gateway_failure",
    "quarantine_rate",
    "actuation_unconfirmed",
    "stop_unconfirmed",
    "unexpected_run",
)
NEW_ALERT_KINDS = ("automation_failure",)
RETRIED = {
    "schedules": "failures > 0",
    "threshold_rules": "failures > 0",
    "run_requests": "failures > 0 AND status = 'waiting'",
}


def _alert_kinds(kinds: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_alerts_kind_known"), "alerts", type_="check")
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    op.create_check_constraint(op.f("ck_alerts_kind_known"), "alerts", f"kind IN ({listed})")


def upgrade() -> None:
    for table, failing in RETRIED.items():
        op.add_column(
            table,
            sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        )
        op.add_column(table, sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        op.create_index(
            f"ix_{table}_failing",
            table,
            ["site_id"],
            unique=False,
            postgresql_where=sa.text(failing),
        )
    op.create_index(
        "ix_webhook_deliveries_internal_error",
        "webhook_deliveries",
        ["site_id"],
        unique=False,
        postgresql_where=sa.text("last_error = 'internal_error'"),
    )
    _alert_kinds(ALERT_KINDS + NEW_ALERT_KINDS)


def downgrade() -> None:
    op.execute(
        f"DELETE FROM alerts WHERE kind IN ({', '.join(repr(kind) for kind in NEW_ALERT_KINDS)})"
    )
    _alert_kinds(ALERT_KINDS)
    op.drop_index("ix_webhook_deliveries_internal_error", table_name="webhook_deliveries")
    for table in RETRIED:
        op.drop_index(f"ix_{table}_failing", table_name=table)
        op.drop_column(table, "retry_at")
        op.drop_column(table, "failures")
