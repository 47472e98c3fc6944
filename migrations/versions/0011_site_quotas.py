"""site quotas: a site's own quotas, the count of bad items a job refused without keeping
them, and the indexes the quotas count with (unfinished imports, pending quarantine) and
the reviewed items' retention deletes by

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 12:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUOTAS = (
    "max_concurrent_imports",
    "max_upload_bytes",
    "waiting_run_requests_per_pump",
    "waiting_run_requests_per_site",
    "max_schedules",
    "max_rules",
    "max_webhooks",
    "max_pending_quarantine",
)


def upgrade() -> None:
    op.create_table(
        "site_quotas",
        sa.Column("site_id", sa.Uuid(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=True) for name in QUOTAS),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_site_quotas_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_site_quotas")),
    )
    op.add_column(
        "ingestion_jobs",
        sa.Column("quarantine_not_kept", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index(
        "ix_ingestion_jobs_unfinished_imports",
        "ingestion_jobs",
        ["site_id"],
        unique=False,
        postgresql_where=sa.text("source = 'import' AND status IN ('queued', 'running')"),
    )
    op.create_index(
        "ix_quarantined_readings_pending",
        "quarantined_readings",
        ["site_id"],
        unique=False,
        postgresql_where=sa.text("review_status = 'pending'"),
    )
    op.create_index(
        "ix_quarantined_readings_reviewed",
        "quarantined_readings",
        ["reviewed_at"],
        unique=False,
        postgresql_where=sa.text("review_status <> 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_quarantined_readings_reviewed", table_name="quarantined_readings")
    op.drop_index("ix_quarantined_readings_pending", table_name="quarantined_readings")
    op.drop_index("ix_ingestion_jobs_unfinished_imports", table_name="ingestion_jobs")
    op.drop_column("ingestion_jobs", "quarantine_not_kept")
    op.drop_table("site_quotas")
