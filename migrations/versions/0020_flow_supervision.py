"""flow supervision: a pump's `flow_settle_s`, `flow_check_s`, `low_flow_pct`,
`high_flow_pct` and learned flow, a run's measured mean flow, a water source's leak
detection (`leak_threshold_lpm`, `leak_after_s`, `halt_on_leak`) and its latched leak and
halt; the alert kinds `low_flow`, `no_flow`, `high_flow`, `leak` and the subject type
`water_source`

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
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
    "automation_failure",
)
NEW_ALERT_KINDS = ("low_flow", "no_flow", "high_flow", "leak")
SUBJECT_TYPES = ("sensor", "pump", "site")
NEW_SUBJECT_TYPES = ("water_source",)

PUMP_CHECKS = {
    "flow_settle_not_negative": "flow_settle_s >= 0",
    "flow_check_positive": "flow_check_s >= 1",
    "low_flow_pct_range": "low_flow_pct BETWEEN 1 AND 99",
    "high_flow_pct_above_100": "high_flow_pct > 100",
}
SOURCE_CHECKS = {
    "leak_threshold_positive": "leak_threshold_lpm > 0",
    "leak_after_positive": "leak_after_s >= 1",
}


def _listed(column: str, values: tuple[str, ...]) -> None:
    table, constraint = "alerts", f"ck_alerts_{column}_known"
    op.drop_constraint(op.f(constraint), table, type_="check")
    listed = ", ".join(f"'{value}'" for value in values)
    op.create_check_constraint(op.f(constraint), table, f"{column} IN ({listed})")


def upgrade() -> None:
    # Defaults on existing pumps: supervision begins for a pump once a meter is attached
    # and it has a nominal flow (or three measured runs); nothing changes before.
    for name, default in (
        ("flow_settle_s", "10"),
        ("flow_check_s", "10"),
        ("low_flow_pct", "50"),
        ("high_flow_pct", "150"),
    ):
        op.add_column(
            "pumps",
            sa.Column(name, sa.Integer(), server_default=sa.text(default), nullable=False),
        )
    op.add_column("pumps", sa.Column("learned_flow_lpm", sa.Float(), nullable=True))
    for name, condition in PUMP_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_pumps_{name}"), "pumps", condition)

    op.add_column("water_sources", sa.Column("leak_threshold_lpm", sa.Float(), nullable=True))
    op.add_column(
        "water_sources",
        sa.Column("leak_after_s", sa.Integer(), server_default=sa.text("60"), nullable=False),
    )
    op.add_column(
        "water_sources",
        sa.Column("halt_on_leak", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "water_sources", sa.Column("leak_detected_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("water_sources", sa.Column("leak_flow_lpm", sa.Float(), nullable=True))
    op.add_column(
        "water_sources", sa.Column("halted_at", sa.DateTime(timezone=True), nullable=True)
    )
    for name, condition in SOURCE_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_water_sources_{name}"), "water_sources", condition)
    op.create_index(
        "ix_water_sources_leaking",
        "water_sources",
        ["site_id"],
        unique=False,
        postgresql_where=sa.text("leak_detected_at IS NOT NULL"),
    )

    op.add_column("pump_activations", sa.Column("mean_flow_lpm", sa.Float(), nullable=True))
    op.create_index(
        "ix_pump_activations_flow_measured",
        "pump_activations",
        ["pump_id", "stopped_at"],
        unique=False,
        postgresql_where=sa.text("mean_flow_lpm IS NOT NULL"),
    )

    _listed("kind", ALERT_KINDS + NEW_ALERT_KINDS)
    _listed("subject_type", SUBJECT_TYPES + NEW_SUBJECT_TYPES)


def downgrade() -> None:
    kinds = ", ".join(repr(kind) for kind in NEW_ALERT_KINDS)
    subjects = ", ".join(repr(subject) for subject in NEW_SUBJECT_TYPES)
    op.execute(f"DELETE FROM alerts WHERE kind IN ({kinds}) OR subject_type IN ({subjects})")
    _listed("subject_type", SUBJECT_TYPES)
    _listed("kind", ALERT_KINDS)

    op.drop_index("ix_pump_activations_flow_measured", table_name="pump_activations")
    op.drop_column("pump_activations", "mean_flow_lpm")

    op.drop_index("ix_water_sources_leaking", table_name="water_sources")
    for name in SOURCE_CHECKS:
        op.drop_constraint(op.f(f"ck_water_sources_{name}"), "water_sources", type_="check")
    for name in (
        "halted_at",
        "leak_flow_lpm",
        "leak_detected_at",
        "halt_on_leak",
        "leak_after_s",
        "leak_threshold_lpm",
    ):
        op.drop_column("water_sources", name)

    for name in PUMP_CHECKS:
        op.drop_constraint(op.f(f"ck_pumps_{name}"), "pumps", type_="check")
    for name in ("learned_flow_lpm", "high_flow_pct", "low_flow_pct", "flow_check_s"):
        op.drop_column("pumps", name)
    op.drop_column("pumps", "flow_settle_s")
