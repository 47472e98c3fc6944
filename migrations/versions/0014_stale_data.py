"""stale data: a threshold rule's `min_readings` and `max_age_s`, a schedule's
`moisture_max_age_s`

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "threshold_rules",
        sa.Column("min_readings", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.add_column(
        "threshold_rules",
        sa.Column("max_age_s", sa.Integer(), server_default=sa.text("900"), nullable=False),
    )
    # A rule that exists already keeps what it did: only readings of its window counted, so
    # its newest could be as old as the window. New rules get the 900 s default.
    op.execute("UPDATE threshold_rules SET max_age_s = window_s")
    op.add_column(
        "schedules",
        sa.Column(
            "moisture_max_age_s", sa.Integer(), server_default=sa.text("900"), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("schedules", "moisture_max_age_s")
    op.drop_column("threshold_rules", "max_age_s")
    op.drop_column("threshold_rules", "min_readings")
