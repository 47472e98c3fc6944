"""weather lockouts: a zone's `min_temp_c`, `max_wind_kmh`, `max_forecast_age_s` and
`on_forecast_unavailable`

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-09 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No lockout on existing zones (both limits NULL): the upgrade changes no zone's watering.
    op.add_column("zones", sa.Column("min_temp_c", sa.Float(), nullable=True))
    op.add_column("zones", sa.Column("max_wind_kmh", sa.Float(), nullable=True))
    op.add_column(
        "zones",
        sa.Column(
            "max_forecast_age_s", sa.Integer(), server_default=sa.text("10800"), nullable=False
        ),
    )
    op.add_column(
        "zones",
        sa.Column(
            "on_forecast_unavailable", sa.String(8), server_default=sa.text("'run'"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_zones_on_forecast_unavailable_known"),
        "zones",
        "on_forecast_unavailable IN ('run', 'hold')",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_zones_on_forecast_unavailable_known"), "zones", type_="check")
    op.drop_column("zones", "on_forecast_unavailable")
    op.drop_column("zones", "max_forecast_age_s")
    op.drop_column("zones", "max_wind_kmh")
    op.drop_column("zones", "min_temp_c")
