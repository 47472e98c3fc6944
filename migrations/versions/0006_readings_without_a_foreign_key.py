"""readings without a foreign key

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 14:17:17.709876+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The rollup row written in the same statement keeps the reference (its own foreign
    # key); this one cost a probe of `sensors` per inserted row.
    op.drop_constraint(
        op.f("fk_sensor_readings_sensor_id_sensors"), "sensor_readings", type_="foreignkey"
    )


def downgrade() -> None:
    op.create_foreign_key(
        op.f("fk_sensor_readings_sensor_id_sensors"),
        "sensor_readings",
        "sensors",
        ["sensor_id"],
        ["id"],
        ondelete="RESTRICT",
    )
