"""API shapes of the fleet: `XCreate`, `XUpdate`, `XOut`."""

import uuid
import zoneinfo
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    model_validator,
)

from irrigation.common.schemas import Body, StoredOut, UpdateBody
from irrigation.common.text import NoNul
from irrigation.gateway import HARDWARE_ID_PATTERN

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul]
# One path segment or MQTT topic level (the device address is `(site_id, hardware_id)`).
HardwareId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=HARDWARE_ID_PATTERN)
]
Unit = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16), NoNul]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
# No upper bound in policy (the site minimum is the lower one); this one is the column's.
CooldownSeconds = Annotated[int, Field(ge=0, le=2**31 - 1)]


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(name: str) -> str:
    if name not in _timezones():
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. 'Europe/Berlin')")
    return name


TimeZone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_check_timezone),
    Field(examples=["Europe/Berlin"], description="IANA time zone name"),
]


class SensorKind(StrEnum):
    soil_moisture = "soil_moisture"
    temperature = "temperature"
    humidity = "humidity"
    flow = "flow"
    pressure = "pressure"
    rain = "rain"
    light = "light"
    wind_speed = "wind_speed"
    conductivity = "conductivity"
    battery = "battery"


# Per-kind valid ranges, used when a sensor sets no `min_value`/`max_value` of its own.
DEFAULT_RANGES: dict[SensorKind, tuple[float, float]] = {
    SensorKind.soil_moisture: (0.0, 100.0),
    SensorKind.temperature: (-40.0, 120.0),
    SensorKind.humidity: (0.0, 100.0),
    SensorKind.flow: (0.0, 1000.0),
    SensorKind.pressure: (0.0, 700.0),
    SensorKind.rain: (0.0, 500.0),
    SensorKind.light: (0.0, 200_000.0),
    SensorKind.wind_speed: (0.0, 100.0),
    SensorKind.conductivity: (0.0, 20.0),
    SensorKind.battery: (0.0, 100.0),
}


# Zones ---------------------------------------------------------------------------------


Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Percent = Annotated[int, Field(ge=0, le=1000)]
BaselineMm = Annotated[float, Field(gt=0, le=50, allow_inf_nan=False)]


class _ZoneWeather(Body):
    @model_validator(mode="after")
    def _pct_order(self) -> Self:
        low, high = getattr(self, "et_min_pct", None), getattr(self, "et_max_pct", None)
        if low is not None and high is not None and low > high:
            raise ValueError("et_min_pct must not be above et_max_pct")
        return self


class ZoneCreate(_ZoneWeather):
    name: Name
    timezone: TimeZone
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    et_scaling: bool = Field(
        default=False,
        description="Scale schedule durations by the day's reference evapotranspiration "
        "(Hargreaves) against `et_baseline_mm`; needs `latitude` and `longitude`.",
    )
    et_baseline_mm: BaselineMm = Field(default=5.0, description="ET0 (mm/day) that means 100 %.")
    et_min_pct: Percent = 0
    et_max_pct: Percent = 200


class ZoneUpdate(_ZoneWeather, UpdateBody):
    nullable = frozenset({"latitude", "longitude"})

    name: Name | None = None
    timezone: TimeZone | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    et_scaling: bool | None = None
    et_baseline_mm: BaselineMm | None = None
    et_min_pct: Percent | None = None
    et_max_pct: Percent | None = None


class ZoneOut(StoredOut):
    name: str
    timezone: str
    default_water_source_id: uuid.UUID | None
    latitude: float | None
    longitude: float | None
    et_scaling: bool
    et_baseline_mm: float
    et_min_pct: int
    et_max_pct: int
    water_level_pct: int = Field(
        description="Schedule durations are scaled by this (100 without ET scaling)."
    )
    water_level_at: datetime | None
    rain_delay_until: datetime | None


# Water sources -------------------------------------------------------------------------


class WaterSourceCreate(Body):
    name: Name
    max_concurrent_pumps: int = Field(default=1, ge=1, le=1000)


class WaterSourceUpdate(UpdateBody):
    name: Name | None = None
    max_concurrent_pumps: int | None = Field(default=None, ge=1, le=1000)


class WaterSourceOut(StoredOut):
    name: str
    max_concurrent_pumps: int


# Pumps ---------------------------------------------------------------------------------


class PumpStatus(StrEnum):
    idle = "idle"
    running = "running"
    cooldown = "cooldown"
    fault = "fault"
    disabled = "disabled"


class PumpCreate(Body):
    zone_id: uuid.UUID
    water_source_id: uuid.UUID | None = Field(
        default=None, description="Omitted: the zone's default water source (made on first use)."
    )
    name: Name
    hardware_id: HardwareId = Field(
        description="The device's id within the site: its address is (site, hardware_id)."
    )
    max_runtime_s: int | None = Field(
        default=None, ge=1, description="Default 30; never above the site's hard cap."
    )
    cooldown_s: CooldownSeconds | None = Field(
        default=None, description="Default 900; never below the site's minimum."
    )
    enabled: bool = True


class PumpUpdate(UpdateBody):
    zone_id: uuid.UUID | None = None
    water_source_id: uuid.UUID | None = None
    name: Name | None = None
    hardware_id: HardwareId | None = Field(
        default=None, description="Not while the pump has an active run (409 `pump_running`)."
    )
    max_runtime_s: int | None = Field(default=None, ge=1)
    cooldown_s: CooldownSeconds | None = None
    enabled: bool | None = None


class PumpOut(StoredOut):
    zone_id: uuid.UUID
    water_source_id: uuid.UUID
    name: str
    hardware_id: str
    max_runtime_s: int
    cooldown_s: int
    enabled: bool
    status: PumpStatus
    cooldown_until: datetime | None
    fault: str | None
    fault_at: datetime | None
    active_activation_id: uuid.UUID | None = Field(
        description="The activation holding the pump (queued, starting or running), if any."
    )


# Sensors -------------------------------------------------------------------------------


class _RangeChecked(Body):
    min_value: Finite | None = None
    max_value: Finite | None = None

    @model_validator(mode="after")
    def _range_order(self) -> Self:
        low, high = self.min_value, self.max_value
        if low is not None and high is not None and low >= high:
            raise ValueError("min_value must be below max_value")
        return self


class _AlertBand(Body):
    alert_min: Finite | None = Field(
        default=None, description="An alert is raised while the latest value is below this."
    )
    alert_max: Finite | None = Field(
        default=None, description="An alert is raised while the latest value is above this."
    )
    silent_after_s: int | None = Field(
        default=None, ge=60, le=30 * 86400, description="Alert when no reading came for this long."
    )

    @model_validator(mode="after")
    def _band_order(self) -> Self:
        low, high = self.alert_min, self.alert_max
        if low is not None and high is not None and low >= high:
            raise ValueError("alert_min must be below alert_max")
        return self


class SensorCreate(_RangeChecked, _AlertBand):
    zone_id: uuid.UUID
    name: Name
    kind: SensorKind
    unit: Unit


class SensorUpdate(_RangeChecked, _AlertBand, UpdateBody):
    nullable = frozenset({"min_value", "max_value", "alert_min", "alert_max", "silent_after_s"})

    zone_id: uuid.UUID | None = None
    name: Name | None = None
    unit: Unit | None = None


class SensorOut(StoredOut):
    zone_id: uuid.UUID
    name: str
    kind: SensorKind
    unit: str
    min_value: float | None
    max_value: float | None
    valid_min: float = Field(description="Effective lower bound: `min_value` or the kind's.")
    valid_max: float = Field(description="Effective upper bound: `max_value` or the kind's.")
    last_seen_at: datetime | None
    alert_min: float | None
    alert_max: float | None
    silent_after_s: int | None
