"""automation history indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 14:30:05.279662+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_automation_decisions_at", "automation_decisions", ["at"], unique=False)
    op.create_index(
        "ix_run_requests_resolved",
        "run_requests",
        ["resolved_at"],
        unique=False,
        postgresql_where=sa.text("status <> 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_run_requests_resolved",
        table_name="run_requests",
        postgresql_where=sa.text("status <> 'waiting'"),
    )
    op.drop_index("ix_automation_decisions_at", table_name="automation_decisions")
