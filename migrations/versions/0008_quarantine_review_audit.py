"""quarantine review audit

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 14:54:24.502332+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "quarantined_readings", sa.Column("reviewed_by", sa.String(length=100), nullable=True)
    )
    op.add_column(
        "quarantined_readings",
        sa.Column("correction", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("quarantined_readings", "correction")
    op.drop_column("quarantined_readings", "reviewed_by")
