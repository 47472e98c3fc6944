"""rate limits: each site's own limit per rate-limit class (no row: the deployment's)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The classes of this revision, written out: a migration must not change when the code does.
RATE_CLASSES = ("read", "write", "ingest", "control", "expensive")


def upgrade() -> None:
    listed = ", ".join(f"'{c}'" for c in RATE_CLASSES)
    op.create_table(
        "site_rate_limits",
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("rate_class", sa.String(length=16), nullable=False),
        sa.Column("rate_limit", sa.String(length=64), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            f"rate_class IN ({listed})", name=op.f("ck_site_rate_limits_rate_class_known")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_site_rate_limits_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site_id", "rate_class", name=op.f("pk_site_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("site_rate_limits")
