"""sensor calibration: each sensor's calibration history, the raw value of a reading, and
calibration backfills

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-09 12:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sensor_calibrations",
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("sensor_id", sa.Uuid(), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gain", sa.Double(), nullable=False),
        sa.Column("offset", sa.Double(), nullable=False),
        sa.Column("raw_dry", sa.Double(), nullable=True),
        sa.Column("raw_wet", sa.Double(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("gain <> 0", name=op.f("ck_sensor_calibrations_gain_not_zero")),
        sa.CheckConstraint(
            "(raw_dry IS NULL) = (raw_wet IS NULL)",
            name=op.f("ck_sensor_calibrations_two_points_together"),
        ),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["sensors.id"],
            name=op.f("fk_sensor_calibrations_sensor_id_sensors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_sensor_calibrations_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sensor_calibrations")),
        sa.UniqueConstraint(
            "sensor_id",
            "effective_from",
            name=op.f("uq_sensor_calibrations_sensor_id_effective_from"),
        ),
    )
    # Nullable, no default: a catalog change only, whatever the table's size. NULL means
    # "stored as sent" (raw = value), which is what every reading before this revision is.
    op.add_column("sensor_readings", sa.Column("raw_value", sa.Double(), nullable=True))
    op.create_table(
        "calibration_backfills",
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("sensor_id", sa.Uuid(), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("done_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("readings_updated", sa.BigInteger(), nullable=False),
        sa.Column("hours_rolled_up", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["sensors.id"],
            name=op.f("fk_calibration_backfills_sensor_id_sensors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_calibration_backfills_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibration_backfills")),
    )
    op.create_index(
        "ix_calibration_backfills_site_page",
        "calibration_backfills",
        ["site_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_calibration_backfills_one_unfinished",
        "calibration_backfills",
        ["sensor_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_calibration_backfills_one_unfinished",
        table_name="calibration_backfills",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_index("ix_calibration_backfills_site_page", table_name="calibration_backfills")
    op.drop_table("calibration_backfills")
    op.drop_column("sensor_readings", "raw_value")
    op.drop_table("sensor_calibrations")
