"""water use: litres per local day from ended runs (estimated) and attached flow meters
(measured), and the marks that tell the rollup job what to account

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 21:14:02.770294+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ended_runs",
        sa.Column("activation_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["activation_id"],
            ["pump_activations.id"],
            name=op.f("fk_ended_runs_activation_id_pump_activations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("activation_id", name=op.f("pk_ended_runs")),
    )
    op.create_table(
        "pending_flow_hours",
        sa.Column("sensor_id", sa.Uuid(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["sensors.id"],
            name=op.f("fk_pending_flow_hours_sensor_id_sensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sensor_id", "hour", name=op.f("pk_pending_flow_hours")),
    )
    op.create_table(
        "water_use_meters",
        sa.Column("sensor_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("meters", sa.String(length=16), nullable=False),
        sa.Column("pump_id", sa.Uuid(), nullable=True),
        sa.Column("zone_id", sa.Uuid(), nullable=True),
        sa.Column("water_source_id", sa.Uuid(), nullable=True),
        sa.Column("litres", sa.Double(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("source_metered", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "meters IN ('pump', 'water_source')", name=op.f("ck_water_use_meters_meters_known")
        ),
        sa.ForeignKeyConstraint(
            ["pump_id"],
            ["pumps.id"],
            name=op.f("fk_water_use_meters_pump_id_pumps"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["sensors.id"],
            name=op.f("fk_water_use_meters_sensor_id_sensors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_water_use_meters_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["water_source_id"],
            ["water_sources.id"],
            name=op.f("fk_water_use_meters_water_source_id_water_sources"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["zone_id"],
            ["zones.id"],
            name=op.f("fk_water_use_meters_zone_id_zones"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("sensor_id", "day", name=op.f("pk_water_use_meters")),
    )
    op.create_index(
        "ix_water_use_meters_pump_day", "water_use_meters", ["pump_id", "day"], unique=False
    )
    op.create_index(
        "ix_water_use_meters_site_day", "water_use_meters", ["site_id", "day"], unique=False
    )
    op.create_index(
        "ix_water_use_meters_water_source_day",
        "water_use_meters",
        ["water_source_id", "day"],
        unique=False,
    )
    op.create_index(
        "ix_water_use_meters_zone_day", "water_use_meters", ["zone_id", "day"], unique=False
    )
    op.create_table(
        "water_use_runs",
        sa.Column("activation_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("pump_id", sa.Uuid(), nullable=True),
        sa.Column("zone_id", sa.Uuid(), nullable=True),
        sa.Column("water_source_id", sa.Uuid(), nullable=True),
        sa.Column("runtime_s", sa.Double(), nullable=False),
        sa.Column("nominal_flow_lpm", sa.Double(), nullable=True),
        sa.Column("litres", sa.Double(), nullable=True),
        sa.Column("pump_metered", sa.Boolean(), nullable=False),
        sa.Column("source_metered", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["activation_id"],
            ["pump_activations.id"],
            name=op.f("fk_water_use_runs_activation_id_pump_activations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pump_id"],
            ["pumps.id"],
            name=op.f("fk_water_use_runs_pump_id_pumps"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_water_use_runs_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["water_source_id"],
            ["water_sources.id"],
            name=op.f("fk_water_use_runs_water_source_id_water_sources"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["zone_id"],
            ["zones.id"],
            name=op.f("fk_water_use_runs_zone_id_zones"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("activation_id", "day", name=op.f("pk_water_use_runs")),
    )
    op.create_index(
        "ix_water_use_runs_pump_day", "water_use_runs", ["pump_id", "day"], unique=False
    )
    op.create_index(
        "ix_water_use_runs_site_day", "water_use_runs", ["site_id", "day"], unique=False
    )
    op.create_index(
        "ix_water_use_runs_water_source_day",
        "water_use_runs",
        ["water_source_id", "day"],
        unique=False,
    )
    op.create_index(
        "ix_water_use_runs_zone_day", "water_use_runs", ["zone_id", "day"], unique=False
    )
    # The history from before: every run that ran and ended, and every hour with readings
    # of a meter attached now, for the rollup job to account (a few at a time),
    # with the pumps' flows and the meters' attachments of today.
    op.execute(
        "INSERT INTO ended_runs (activation_id) SELECT id FROM pump_activations"
        " WHERE started_at IS NOT NULL AND stopped_at IS NOT NULL"
    )
    op.execute(
        "INSERT INTO pending_flow_hours (sensor_id, hour)"
        " SELECT r.sensor_id, r.bucket FROM reading_rollups_hourly AS r"
        " JOIN sensors AS s ON s.id = r.sensor_id"
        " WHERE s.pump_id IS NOT NULL OR s.water_source_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_water_use_runs_zone_day", table_name="water_use_runs")
    op.drop_index("ix_water_use_runs_water_source_day", table_name="water_use_runs")
    op.drop_index("ix_water_use_runs_site_day", table_name="water_use_runs")
    op.drop_index("ix_water_use_runs_pump_day", table_name="water_use_runs")
    op.drop_table("water_use_runs")
    op.drop_index("ix_water_use_meters_zone_day", table_name="water_use_meters")
    op.drop_index("ix_water_use_meters_water_source_day", table_name="water_use_meters")
    op.drop_index("ix_water_use_meters_site_day", table_name="water_use_meters")
    op.drop_index("ix_water_use_meters_pump_day", table_name="water_use_meters")
    op.drop_table("water_use_meters")
    op.drop_table("pending_flow_hours")
    op.drop_table("ended_runs")
