"""The water-use rollup: litres per local day, from runs (runtime x nominal flow, estimated)
and from attached flow meters (their readings integrated, measured). Written only by the
rollup job (wateruse/rollup.py); the API sums these rows, never readings.

Each row keeps what it counts for as it was when it was written (the pump's zone and water
source, whether a meter was attached), so that a pump moved to another zone later does not
take its past water with it, and the sums below need no join."""

import uuid
from datetime import date
from enum import StrEnum

from sqlalchemy import CheckConstraint, Double, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base


class Metered(StrEnum):
    pump = "pump"
    water_source = "water_source"


class RunWaterUse(Base):
    """One ended run's share of one local day (of its pump's zone): a run across midnight
    has a row per day. `litres` is runtime x the pump's `nominal_flow_lpm`, None when the
    pump had none (the water is unknown, `runtime_s` says how long). A run whose pump had a
    meter attached counts nothing for the pump, its zone, source or site (the meter's rows
    do); one whose source had a meter counts nothing for the source or site."""

    __tablename__ = "water_use_runs"
    __table_args__ = (
        Index("ix_water_use_runs_site_day", "site_id", "day"),
        Index("ix_water_use_runs_pump_day", "pump_id", "day"),
        Index("ix_water_use_runs_zone_day", "zone_id", "day"),
        Index("ix_water_use_runs_water_source_day", "water_source_id", "day"),
    )

    activation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    # SET NULL: the history outlives a deleted zone; the site's and source's sums keep it.
    pump_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pumps.id", ondelete="SET NULL"))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zones.id", ondelete="SET NULL"))
    water_source_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("water_sources.id", ondelete="SET NULL")
    )
    runtime_s: Mapped[float] = mapped_column(Double)
    nominal_flow_lpm: Mapped[float | None] = mapped_column(Double)
    litres: Mapped[float | None] = mapped_column(Double)
    pump_metered: Mapped[bool]
    source_metered: Mapped[bool]


class MeterWaterUse(Base):
    """One attached flow meter's litres in one local day: its readings integrated (the
    trapezoid rule, L/min x minutes), recomputed whole whenever a reading of the day (or
    within the gap of it) arrives or changes. A pump's meter counts in its pump's zone's
    calendar, a source's meter in its own zone's. `source_metered`: the pump's source had a
    meter too, which then counts this water for the source and the site."""

    __tablename__ = "water_use_meters"
    __table_args__ = (
        CheckConstraint("meters IN ('pump', 'water_source')", name="meters_known"),
        Index("ix_water_use_meters_site_day", "site_id", "day"),
        Index("ix_water_use_meters_pump_day", "pump_id", "day"),
        Index("ix_water_use_meters_zone_day", "zone_id", "day"),
        Index("ix_water_use_meters_water_source_day", "water_source_id", "day"),
    )

    sensor_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sensors.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(primary_key=True)
    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    meters: Mapped[str] = mapped_column(String(16))
    pump_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pumps.id", ondelete="SET NULL"))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zones.id", ondelete="SET NULL"))
    water_source_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("water_sources.id", ondelete="SET NULL")
    )
    litres: Mapped[float] = mapped_column(Double)
    readings: Mapped[int] = mapped_column(Integer)
    source_metered: Mapped[bool]
