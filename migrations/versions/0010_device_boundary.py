"""device boundary: the start command's auto-off time, the outbox relay's claim, device
incidents and their alert kinds; hardware ids outside the address pattern are reported,
never changed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 09:00:00.000000+00:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The device address pattern of this revision (irrigation.gateway.HARDWARE_ID_PATTERN then),
# written out: a migration must not change when the code does.
HARDWARE_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
log = logging.getLogger("alembic.runtime.migration")

ALERT_KINDS = (
    "sensor_out_of_band",
    "sensor_silent",
    "pump_fault",
    "gateway_failure",
    "quarantine_rate",
)
DEVICE_ALERT_KINDS = ("actuation_unconfirmed", "stop_unconfirmed", "unexpected_run")


def _alert_kinds(kinds: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_alerts_kind_known"), "alerts", type_="check")
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    op.create_check_constraint(op.f("ck_alerts_kind_known"), "alerts", f"kind IN ({listed})")


def report_unaddressable_pumps() -> None:
    """Pumps whose hardware_id cannot be a device address any more are listed, not renamed:
    a device answers to its id, and only its operator knows the new one. Until they get a
    valid id (PATCH), the API refuses to run them (409 `invalid_hardware_id`)."""
    query = (
        "SELECT site_id, id, hardware_id FROM pumps "
        f"WHERE hardware_id !~ '{HARDWARE_ID_PATTERN}' ORDER BY site_id, hardware_id"
    )
    if context.is_offline_mode():
        # A script run by hand: the server tells whoever runs it.
        op.execute(
            "DO $$ DECLARE p record; BEGIN "
            f"FOR p IN {query} LOOP RAISE WARNING 'pump % of site % has hardware_id % "
            "outside the device address pattern; it cannot run until it gets a valid one', "
            "p.id, p.site_id, quote_literal(p.hardware_id); END LOOP; END $$"
        )
        return
    rows = op.get_bind().execute(sa.text(query)).all()
    if rows:
        listed = "; ".join(f"pump {r.id} of site {r.site_id}: {r.hardware_id!r}" for r in rows)
        log.warning(
            "%d pump(s) have a hardware_id outside the device address pattern %s and cannot "
            "run until an operator gives them a valid one (PATCH /v1/pumps/{id}); left as "
            "they are: %s",
            len(rows),
            HARDWARE_ID_PATTERN,
            listed,
        )


def upgrade() -> None:
    op.add_column(
        "pump_activations",
        sa.Column("auto_off_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("outbox", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "device_incidents",
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("pump_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("command_id", sa.String(length=100), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["pump_id"],
            ["pumps.id"],
            name=op.f("fk_device_incidents_pump_id_pumps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_device_incidents_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_incidents")),
    )
    op.create_index(
        op.f("ix_device_incidents_pump_id"), "device_incidents", ["pump_id"], unique=False
    )
    op.create_index("ix_device_incidents_recent", "device_incidents", ["kind", "at"], unique=False)
    _alert_kinds(ALERT_KINDS + DEVICE_ALERT_KINDS)
    report_unaddressable_pumps()


def downgrade() -> None:
    op.execute(
        "DELETE FROM alerts WHERE kind IN ("
        + ", ".join(f"'{kind}'" for kind in DEVICE_ALERT_KINDS)
        + ")"
    )
    _alert_kinds(ALERT_KINDS)
    op.drop_index("ix_device_incidents_recent", table_name="device_incidents")
    op.drop_index(op.f("ix_device_incidents_pump_id"), table_name="device_incidents")
    op.drop_table("device_incidents")
    op.drop_column("outbox", "claimed_at")
    op.drop_column("pump_activations", "auto_off_at")
