"""cycle-and-soak: a zone's `max_cycle_s` and `min_soak_s`; a run request's `watering_id`,
`cycle`, `cycles` and `soak_s`; a decision's `watering_id`

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-12 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No zone splits (max_cycle_s NULL) and no soak: the upgrade changes no zone's watering.
    op.add_column("zones", sa.Column("max_cycle_s", sa.Integer(), nullable=True))
    op.add_column(
        "zones", sa.Column("min_soak_s", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.create_check_constraint(op.f("ck_zones_max_cycle_positive"), "zones", "max_cycle_s >= 1")
    op.create_check_constraint(op.f("ck_zones_min_soak_not_negative"), "zones", "min_soak_s >= 0")
    # Requests queued before the upgrade belong to no watering and wait for no soak.
    op.add_column("run_requests", sa.Column("watering_id", sa.Uuid(), nullable=True))
    op.add_column("run_requests", sa.Column("cycle", sa.SmallInteger(), nullable=True))
    op.add_column("run_requests", sa.Column("cycles", sa.SmallInteger(), nullable=True))
    op.add_column(
        "run_requests",
        sa.Column("soak_s", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index(
        "ix_run_requests_watering",
        "run_requests",
        ["watering_id"],
        postgresql_where=sa.text("watering_id IS NOT NULL"),
    )
    op.add_column("automation_decisions", sa.Column("watering_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("automation_decisions", "watering_id")
    op.drop_index("ix_run_requests_watering", table_name="run_requests")
    op.drop_column("run_requests", "soak_s")
    op.drop_column("run_requests", "cycles")
    op.drop_column("run_requests", "cycle")
    op.drop_column("run_requests", "watering_id")
    op.drop_constraint(op.f("ck_zones_min_soak_not_negative"), "zones", type_="check")
    op.drop_constraint(op.f("ck_zones_max_cycle_positive"), "zones", type_="check")
    op.drop_column("zones", "min_soak_s")
    op.drop_column("zones", "max_cycle_s")
