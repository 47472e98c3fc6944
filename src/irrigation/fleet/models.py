"""Fleet tables. Every row belongs to one site; every query filters on `site_id`."""

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    Float,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from irrigation.common.orm import Base, IdMixin


class Versioned:
    """Optimistic lock for config edits: a PATCH must name the version it read."""

    version: Mapped[int] = mapped_column(default=1)


class Zone(IdMixin, Versioned, Base):
    __tablename__ = "zones"
    __table_args__ = (
        Index("ix_zones_site_page", "site_id", "created_at", "id"),
        UniqueConstraint("site_id", "name"),
        CheckConstraint(
            "on_forecast_unavailable IN ('run', 'hold')", name="on_forecast_unavailable_known"
        ),
        CheckConstraint("max_cycle_s >= 1", name="max_cycle_positive"),
        CheckConstraint("min_soak_s >= 0", name="min_soak_not_negative"),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    # Pumps created without a water source share this one, made on first need.
    default_water_source_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("water_sources.id", ondelete="SET NULL"), default=None
    )
    # Weather and evapotranspiration scaling of schedule durations.
    latitude: Mapped[float | None] = mapped_column(Float, default=None)
    longitude: Mapped[float | None] = mapped_column(Float, default=None)
    et_scaling: Mapped[bool] = mapped_column(default=False, server_default="false")
    et_baseline_mm: Mapped[float] = mapped_column(Float, default=5.0, server_default="5.0")
    et_min_pct: Mapped[int] = mapped_column(default=0, server_default="0")
    et_max_pct: Mapped[int] = mapped_column(default=200, server_default="200")
    # The last computed "water level": 100 % unless ET scaling says otherwise.
    water_level_pct: Mapped[int] = mapped_column(default=100, server_default="100")
    water_level_at: Mapped[datetime | None] = mapped_column(default=None)
    rain_delay_until: Mapped[datetime | None] = mapped_column(default=None)
    # Weather lockouts (automation/lockouts.py): automated runs wait while the forecast for
    # the hour of their start is below `min_temp_c` or above `max_wind_kmh` (None: no such
    # lockout); without a forecast at most `max_forecast_age_s` old, `run` or `hold`.
    min_temp_c: Mapped[float | None] = mapped_column(Float, default=None)
    max_wind_kmh: Mapped[float | None] = mapped_column(Float, default=None)
    max_forecast_age_s: Mapped[int] = mapped_column(default=10800, server_default="10800")
    on_forecast_unavailable: Mapped[str] = mapped_column(
        String(8), default="run", server_default="run"
    )
    # Cycle-and-soak (automation/cycles.py): an automated watering longer than
    # `max_cycle_s` runs as several cycles, at least `min_soak_s` apart, so the soil takes
    # the water in instead of shedding it. None: no splitting (one run, as before).
    max_cycle_s: Mapped[int | None] = mapped_column(default=None)
    min_soak_s: Mapped[int] = mapped_column(default=0, server_default="0")


class WaterSource(IdMixin, Versioned, Base):
    __tablename__ = "water_sources"
    __table_args__ = (
        Index("ix_water_sources_site_page", "site_id", "created_at", "id"),
        UniqueConstraint("site_id", "name"),
        CheckConstraint("max_concurrent_pumps >= 1", name="max_concurrent_pumps_positive"),
        CheckConstraint("max_flow_lpm > 0", name="max_flow_positive"),
        CheckConstraint("leak_threshold_lpm > 0", name="leak_threshold_positive"),
        CheckConstraint("leak_after_s >= 1", name="leak_after_positive"),
        # The alert evaluation's scan of leaking sources (normally none).
        Index(
            "ix_water_sources_leaking",
            "site_id",
            postgresql_where=text("leak_detected_at IS NOT NULL"),
        ),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    max_concurrent_pumps: Mapped[int] = mapped_column(default=1)
    # The flow budget, L/min: the active runs' pumps' nominal flows may not add up past it
    # (pumps/flow.py). None: no flow limit.
    max_flow_lpm: Mapped[float | None] = mapped_column(Float, default=None)
    # Leak detection (pumps/supervision.py): the source's meter reading above
    # `leak_threshold_lpm` (None: no detection) for `leak_after_s` while none of its pumps
    # runs latches `leak_detected_at` (and, with `halt_on_leak`, `halted_at`: no run is
    # admitted on the source) until an operator resets the source.
    leak_threshold_lpm: Mapped[float | None] = mapped_column(Float, default=None)
    leak_after_s: Mapped[int] = mapped_column(default=60, server_default="60")
    halt_on_leak: Mapped[bool] = mapped_column(default=False, server_default="false")
    leak_detected_at: Mapped[datetime | None] = mapped_column(default=None)
    # The lowest flow the meter read over the window that found the leak, L/min.
    leak_flow_lpm: Mapped[float | None] = mapped_column(Float, default=None)
    halted_at: Mapped[datetime | None] = mapped_column(default=None)


class Pump(IdMixin, Versioned, Base):
    __tablename__ = "pumps"
    __table_args__ = (
        Index("ix_pumps_site_page", "site_id", "created_at", "id"),
        UniqueConstraint("site_id", "hardware_id"),
        CheckConstraint("max_runtime_s >= 1", name="max_runtime_positive"),
        CheckConstraint("cooldown_s >= 0", name="cooldown_not_negative"),
        CheckConstraint("nominal_flow_lpm > 0", name="nominal_flow_positive"),
        CheckConstraint("flow_settle_s >= 0", name="flow_settle_not_negative"),
        CheckConstraint("flow_check_s >= 1", name="flow_check_positive"),
        CheckConstraint("low_flow_pct BETWEEN 1 AND 99", name="low_flow_pct_range"),
        CheckConstraint("high_flow_pct > 100", name="high_flow_pct_above_100"),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("zones.id", ondelete="RESTRICT"), index=True
    )
    water_source_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("water_sources.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    hardware_id: Mapped[str] = mapped_column(String(100))
    max_runtime_s: Mapped[int]
    cooldown_s: Mapped[int]
    enabled: Mapped[bool] = mapped_column(default=True)
    # What the pump draws from its water source, L/min, counted against the source's
    # `max_flow_lpm`. None: unknown, counted as the source's whole budget (pumps/flow.py).
    nominal_flow_lpm: Mapped[float | None] = mapped_column(Float, default=None)
    # Flow supervision of its runs against its meter (pumps/supervision.py): from
    # `flow_settle_s` after the start, the mean flow over `flow_check_s` below `low_flow_pct`
    # or above `high_flow_pct` of the expected flow stops the run.
    flow_settle_s: Mapped[int] = mapped_column(default=10, server_default="10")
    flow_check_s: Mapped[int] = mapped_column(default=10, server_default="10")
    low_flow_pct: Mapped[int] = mapped_column(default=50, server_default="50")
    high_flow_pct: Mapped[int] = mapped_column(default=150, server_default="150")
    # The median of the mean flows of its last normal runs (None until enough were
    # measured): what supervision expects, before `nominal_flow_lpm`.
    learned_flow_lpm: Mapped[float | None] = mapped_column(Float, default=None)
    cooldown_until: Mapped[datetime | None] = mapped_column(default=None)
    fault: Mapped[str | None] = mapped_column(String(500), default=None)
    fault_at: Mapped[datetime | None] = mapped_column(default=None)
    # The activation holding this pump (queued, starting or running), kept on the locked
    # row itself so the critical section decides "busy" without another query.
    active_activation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pump_activations.id", ondelete="SET NULL", use_alter=True), default=None
    )
    # Strictly increasing per pump; sent to the device with every start (fencing token).
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Sensor(IdMixin, Versioned, Base):
    __tablename__ = "sensors"
    __table_args__ = (
        Index("ix_sensors_site_page", "site_id", "created_at", "id"),
        CheckConstraint(
            "min_value IS NULL OR max_value IS NULL OR min_value < max_value", name="range_order"
        ),
        # A flow meter measures one pump's line or one water source's main, never both; only
        # a flow sensor is attached (flow supervision and water use read it).
        CheckConstraint("pump_id IS NULL OR water_source_id IS NULL", name="one_attachment"),
        CheckConstraint(
            "kind = 'flow' OR (pump_id IS NULL AND water_source_id IS NULL)",
            name="only_flow_attached",
        ),
        # One meter per pump and per source: supervision and water use read "the" flow.
        Index(
            "uq_sensors_pump", "pump_id", unique=True, postgresql_where=text("pump_id IS NOT NULL")
        ),
        Index(
            "uq_sensors_water_source",
            "water_source_id",
            unique=True,
            postgresql_where=text("water_source_id IS NOT NULL"),
        ),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    zone_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("zones.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str] = mapped_column(String(16))
    min_value: Mapped[float | None] = mapped_column(Float, default=None)
    max_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    # Alert band and silence limit (alerts, not validation: values outside the band are kept).
    alert_min: Mapped[float | None] = mapped_column(Float, default=None)
    alert_max: Mapped[float | None] = mapped_column(Float, default=None)
    silent_after_s: Mapped[int | None] = mapped_column(default=None)
    # A flow sensor's attachment: the pump whose line it meters, or the water source whose
    # main it meters (SET NULL: the meter stays, unattached, when its pump or source goes).
    pump_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pumps.id", ondelete="SET NULL"), default=None
    )
    water_source_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("water_sources.id", ondelete="SET NULL"), default=None
    )


class SensorCalibration(IdMixin, Base):
    """One step of a sensor's calibration history: from `effective_from` on (until the next
    step), a reading's value is `gain * raw + offset`. A two-point calibration (`raw_dry`
    -> 0 %, `raw_wet` -> 100 %) is stored as the gain and offset it amounts to, with its two
    points kept for whoever reads the history. Before the first step a reading is stored as
    sent. Steps are never edited; one not yet in effect may be deleted."""

    __tablename__ = "sensor_calibrations"
    __table_args__ = (
        # One step per instant, so the history is a function of time; also the index that
        # ingestion's sensor lookup and the backfill probe (sensor, time).
        UniqueConstraint("sensor_id", "effective_from"),
        CheckConstraint("gain <> 0", name="gain_not_zero"),
        CheckConstraint("(raw_dry IS NULL) = (raw_wet IS NULL)", name="two_points_together"),
    )

    site_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    sensor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sensors.id", ondelete="CASCADE"))
    effective_from: Mapped[datetime]
    gain: Mapped[float] = mapped_column(Double)
    offset: Mapped[float] = mapped_column(Double)
    raw_dry: Mapped[float | None] = mapped_column(Double, default=None)
    raw_wet: Mapped[float | None] = mapped_column(Double, default=None)
