"""messages of no site: a job and quarantined items without a site

An MQTT message whose topic names no known site is still quarantined (parse_error, with
its topic and payload), under a job of the bridge's that belongs to no site: no site's
API sees either; operators find them with `site_id IS NULL`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 05:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("ingestion_jobs", "site_id", existing_type=sa.Uuid(), nullable=True)
    op.alter_column("quarantined_readings", "site_id", existing_type=sa.Uuid(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM quarantined_readings WHERE site_id IS NULL")
    op.execute("DELETE FROM ingestion_jobs WHERE site_id IS NULL")
    op.alter_column("quarantined_readings", "site_id", existing_type=sa.Uuid(), nullable=False)
    op.alter_column("ingestion_jobs", "site_id", existing_type=sa.Uuid(), nullable=False)
