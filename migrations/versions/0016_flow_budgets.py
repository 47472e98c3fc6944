"""flow budgets: a pump's `nominal_flow_lpm`, a water source's `max_flow_lpm`, and a run
request's `bypass_count` (how often smaller runs started ahead of it)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both NULL on existing rows: no source has a flow limit, so the upgrade changes no
    # admission and no queue order.
    op.add_column("pumps", sa.Column("nominal_flow_lpm", sa.Float(), nullable=True))
    op.create_check_constraint(
        op.f("ck_pumps_nominal_flow_positive"), "pumps", "nominal_flow_lpm > 0"
    )
    op.add_column("water_sources", sa.Column("max_flow_lpm", sa.Float(), nullable=True))
    op.create_check_constraint(
        op.f("ck_water_sources_max_flow_positive"), "water_sources", "max_flow_lpm > 0"
    )
    op.add_column(
        "run_requests",
        sa.Column("bypass_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("run_requests", "bypass_count")
    op.drop_constraint(op.f("ck_water_sources_max_flow_positive"), "water_sources", type_="check")
    op.drop_column("water_sources", "max_flow_lpm")
    op.drop_constraint(op.f("ck_pumps_nominal_flow_positive"), "pumps", type_="check")
    op.drop_column("pumps", "nominal_flow_lpm")
