"""flow sensors attached to a pump (`pump_id`) or a water source (`water_source_id`): the
meters that flow supervision and water use read

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 21:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL on existing rows: no sensor is attached, so nothing supervises or meters yet.
    op.add_column("sensors", sa.Column("pump_id", sa.Uuid(), nullable=True))
    op.add_column("sensors", sa.Column("water_source_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_sensors_pump_id_pumps"),
        "sensors",
        "pumps",
        ["pump_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_foreign_key(
        op.f("fk_sensors_water_source_id_water_sources"),
        "sensors",
        "water_sources",
        ["water_source_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_check_constraint(
        op.f("ck_sensors_one_attachment"), "sensors", "pump_id IS NULL OR water_source_id IS NULL"
    )
    op.create_check_constraint(
        op.f("ck_sensors_only_flow_attached"),
        "sensors",
        "kind = 'flow' OR (pump_id IS NULL AND water_source_id IS NULL)",
    )
    op.create_index(
        "uq_sensors_pump",
        "sensors",
        ["pump_id"],
        unique=True,
        postgresql_where=sa.text("pump_id IS NOT NULL"),
    )
    op.create_index(
        "uq_sensors_water_source",
        "sensors",
        ["water_source_id"],
        unique=True,
        postgresql_where=sa.text("water_source_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_sensors_water_source", table_name="sensors")
    op.drop_index("uq_sensors_pump", table_name="sensors")
    op.drop_constraint(op.f("ck_sensors_only_flow_attached"), "sensors", type_="check")
    op.drop_constraint(op.f("ck_sensors_one_attachment"), "sensors", type_="check")
    op.drop_constraint(
        op.f("fk_sensors_water_source_id_water_sources"), "sensors", type_="foreignkey"
    )
    op.drop_constraint(op.f("fk_sensors_pump_id_pumps"), "sensors", type_="foreignkey")
    op.drop_column("sensors", "water_source_id")
    op.drop_column("sensors", "pump_id")
