"""API shapes of the fleet: `XCreate`, `XUpdate`, `XOut`."""

import uuid
import zoneinfo
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict

from irrigation.common.schemas import Body, NotBlankText, StoredOut, UpdateBody
from irrigation.common.text import NoNul
from irrigation.gateway import HARDWARE_ID_PATTERN

Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    NoNul,
    NotBlankText,
]
# One path segment or MQTT topic level (the device address is `(site_id, hardware_id)`).
HardwareId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=HARDWARE_ID_PATTERN)
]
Unit = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16), NoNul, NotBlankText
]
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


# The shape of every name in the tz database. Not an enum of the names themselves: the list
# comes from the installed tz database (tzdata), so it changes with it, and a client built
# from an older list would refuse a zone that a newer server returns.
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"
TimeZone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_check_timezone),
    Field(
        examples=["Europe/Berlin"],
        description="IANA time zone name (`Europe/Berlin`, `America/Argentina/Cordoba`, "
        "`UTC`), exactly as in the tz database: a name of the right shape that the tz "
        "database does not know is refused (422).",
        json_schema_extra={"pattern": TIMEZONE_PATTERN},
    ),
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
_ET_MIN = "Lower bound of the ET water level, %; not above `et_max_pct` (the stored one on PATCH)."
_ET_MAX = "Upper bound of the ET water level, %; not below `et_min_pct`."

# Weather lockouts: automated runs (schedules, threshold rules) wait while the forecast for
# the hour of their start is past these; a person's runs (manual, emergency) never do.
MinTempC = Annotated[float, Field(ge=-60, le=60, allow_inf_nan=False)]
MaxWindKmh = Annotated[float, Field(gt=0, le=400, allow_inf_nan=False)]
ForecastAgeS = Annotated[int, Field(ge=60, le=86400)]
OnForecastUnavailable = Literal["run", "hold"]
_MIN_TEMP = (
    "Frost lockout, °C: an automated run (schedule, threshold rule) does not start while the "
    "forecast temperature (2 m) for the hour of its start is below this; it waits (decision "
    "`deferred`, reason `freeze`) until the forecast clears or its deadline passes (then "
    "`skipped`, `deadline_passed`). Manual and emergency runs are never held. Null: no frost "
    "lockout. Needs `latitude` and `longitude`."
)
_MAX_WIND = (
    "Wind lockout, km/h: as `min_temp_c`, while the forecast wind speed (10 m) for the hour of "
    "the start is above this (reason `wind`). Null: no wind lockout."
)
_MAX_FORECAST_AGE = (
    "Seconds: a forecast older than this is no forecast for the lockouts (the service fetches "
    "a newer one first; when it cannot, `on_forecast_unavailable` applies)."
)
_ON_UNAVAILABLE = (
    "With a lockout set and no usable forecast (none, or older than `max_forecast_age_s`): "
    "`run` (the default: a forecast is advice; the start's decision says the lockouts were "
    "not checked) or `hold` (the run waits, reason `forecast_unavailable`, until a forecast "
    "comes back or its deadline passes)."
)


# Cycle-and-soak: an automated watering longer than `max_cycle_s` runs as cycles.
MaxCycleS = Annotated[int, Field(ge=1, le=3600)]
MinSoakS = Annotated[int, Field(ge=0, le=86400)]
_MAX_CYCLE = (
    "Cycle-and-soak, seconds: a scheduled or threshold watering longer than this (after ET "
    "scaling) runs as several cycles of at most this long (and at most each pump's "
    "`max_runtime_s`; then the watering's whole duration is run, not capped at "
    "`max_runtime_s`), with at least `min_soak_s` between them; other zones' runs on the "
    "water source may start in the gaps. At most 48 cycles a pump per watering. Manual and "
    "emergency runs are never split. Null: no splitting (a run longer than `max_runtime_s` "
    "is cut to it, as without cycle-and-soak)."
)
_MIN_SOAK = (
    "Seconds the zone rests between two cycles of a watering, at least (measured from the "
    "previous cycle's stop). A pump's `cooldown_s` still holds: the gap is the longer of the "
    "two. Used only with `max_cycle_s`."
)


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
    et_min_pct: Percent = Field(default=0, description=_ET_MIN)
    et_max_pct: Percent = Field(default=200, description=_ET_MAX)
    min_temp_c: MinTempC | None = Field(default=None, description=_MIN_TEMP)
    max_wind_kmh: MaxWindKmh | None = Field(default=None, description=_MAX_WIND)
    max_forecast_age_s: ForecastAgeS = Field(default=10800, description=_MAX_FORECAST_AGE)
    on_forecast_unavailable: OnForecastUnavailable = Field(
        default="run", description=_ON_UNAVAILABLE
    )
    max_cycle_s: MaxCycleS | None = Field(default=None, description=_MAX_CYCLE)
    min_soak_s: MinSoakS = Field(default=0, description=_MIN_SOAK)


class ZoneUpdate(_ZoneWeather, UpdateBody):
    nullable = frozenset({"latitude", "longitude", "min_temp_c", "max_wind_kmh", "max_cycle_s"})

    name: Name | None = None
    timezone: TimeZone | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    et_scaling: bool | None = None
    et_baseline_mm: BaselineMm | None = None
    et_min_pct: Percent | None = Field(default=None, description=_ET_MIN)
    et_max_pct: Percent | None = Field(default=None, description=_ET_MAX)
    min_temp_c: MinTempC | None = Field(default=None, description=_MIN_TEMP)
    max_wind_kmh: MaxWindKmh | None = Field(default=None, description=_MAX_WIND)
    max_forecast_age_s: ForecastAgeS | None = Field(default=None, description=_MAX_FORECAST_AGE)
    on_forecast_unavailable: OnForecastUnavailable | None = Field(
        default=None, description=_ON_UNAVAILABLE
    )
    max_cycle_s: MaxCycleS | None = Field(default=None, description=_MAX_CYCLE)
    min_soak_s: MinSoakS | None = Field(default=None, description=_MIN_SOAK)


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
    min_temp_c: float | None = Field(description=_MIN_TEMP)
    max_wind_kmh: float | None = Field(description=_MAX_WIND)
    max_forecast_age_s: int = Field(description=_MAX_FORECAST_AGE)
    on_forecast_unavailable: OnForecastUnavailable = Field(description=_ON_UNAVAILABLE)
    max_cycle_s: int | None = Field(description=_MAX_CYCLE)
    min_soak_s: int = Field(description=_MIN_SOAK)


# Water sources -------------------------------------------------------------------------


# Litres per minute: above zero, and below anything a farm's pipe carries.
FlowLpm = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
_MAX_CONCURRENT = "How many pumps of this source may run at once."
_MAX_FLOW = (
    "Flow budget, L/min: a run is admitted only while the nominal flows of the source's "
    "active runs (queued, starting, running) plus its own stay at or below this; otherwise "
    "409 `capacity` with `limit` `flow` (a queued run waits). A pump without "
    "`nominal_flow_lpm` counts as the whole budget (it runs alone). Null: no flow limit. "
    "Lowering it stops no run already admitted."
)
_NOMINAL_FLOW = (
    "What the pump draws from its water source, L/min, counted against the source's "
    "`max_flow_lpm`. Null: unknown, counted as the source's whole budget. Above the "
    "source's `max_flow_lpm`, a run is refused (409 `flow_exceeds_source`). Not changed "
    "while the pump has an active run (409 `pump_running`)."
)


_LEAK_THRESHOLD = (
    "Leak detection, L/min: while none of the source's pumps runs, its flow meter (a "
    "`flow` sensor with this `water_source_id`) reading above this for `leak_after_s` "
    "raises the critical alert `leak` and latches `leak_detected_at` until "
    "`POST /v1/water-sources/{id}/reset`. Null (the default): no leak detection."
)
_LEAK_AFTER = (
    "Seconds the idle source's flow must stay above `leak_threshold_lpm` (every reading of "
    "the window, and the one before it) before it is a leak."
)
_HALT_ON_LEAK = (
    "On a leak, also halt the source: its active runs are stopped (`stop_cause` `leak`) and "
    "no run is admitted on it (409 `source_halted`; the run queue waits) until the source is "
    "reset."
)
_LEAK_DETECTED = "When a leak was found (latched until the source is reset); null: none."
_LEAK_FLOW = "The lowest flow its meter read over the window that found the leak, L/min."
_HALTED = (
    "When the source was halted for a leak (`halt_on_leak`): no run is admitted on it until "
    "`POST /v1/water-sources/{id}/reset`; null: not halted."
)
LeakAfterS = Annotated[int, Field(ge=1, le=86400)]


class WaterSourceCreate(Body):
    name: Name
    max_concurrent_pumps: int = Field(default=1, ge=1, le=1000, description=_MAX_CONCURRENT)
    max_flow_lpm: FlowLpm | None = Field(default=None, description=_MAX_FLOW)
    leak_threshold_lpm: FlowLpm | None = Field(default=None, description=_LEAK_THRESHOLD)
    leak_after_s: LeakAfterS = Field(default=60, description=_LEAK_AFTER)
    halt_on_leak: bool = Field(default=False, description=_HALT_ON_LEAK)


class WaterSourceUpdate(UpdateBody):
    nullable = frozenset({"max_flow_lpm", "leak_threshold_lpm"})

    name: Name | None = None
    max_concurrent_pumps: int | None = Field(
        default=None, ge=1, le=1000, description=_MAX_CONCURRENT
    )
    max_flow_lpm: FlowLpm | None = Field(default=None, description=_MAX_FLOW)
    leak_threshold_lpm: FlowLpm | None = Field(default=None, description=_LEAK_THRESHOLD)
    leak_after_s: LeakAfterS | None = Field(default=None, description=_LEAK_AFTER)
    halt_on_leak: bool | None = Field(default=None, description=_HALT_ON_LEAK)


class WaterSourceOut(StoredOut):
    name: str
    max_concurrent_pumps: int = Field(description=_MAX_CONCURRENT)
    max_flow_lpm: float | None = Field(description=_MAX_FLOW)
    leak_threshold_lpm: float | None = Field(description=_LEAK_THRESHOLD)
    leak_after_s: int = Field(description=_LEAK_AFTER)
    halt_on_leak: bool = Field(description=_HALT_ON_LEAK)
    leak_detected_at: datetime | None = Field(description=_LEAK_DETECTED)
    leak_flow_lpm: float | None = Field(description=_LEAK_FLOW)
    halted_at: datetime | None = Field(description=_HALTED)


# Pumps ---------------------------------------------------------------------------------


class PumpStatus(StrEnum):
    idle = "idle"
    running = "running"
    cooldown = "cooldown"
    fault = "fault"
    disabled = "disabled"


# Server settings, not constants of the API: the document would otherwise change with them.
_MAX_RUNTIME = (
    "Seconds; default 30. At most the server's hard cap (`IRRIGATION_MAX_RUNTIME_CAP_S`, 30 "
    "unless configured): above it is 422."
)
# The cap itself is at most an hour (Settings.max_runtime_cap_s).
_AT_MOST_THE_CAP: JsonDict = {"maximum": 3600}
_COOLDOWN = (
    "Seconds; default 900. At least the server's minimum (`IRRIGATION_MIN_COOLDOWN_S`, 900 "
    "unless configured): below it is 422."
)


_FLOW_SETTLE = (
    "Flow supervision, seconds after a run's start before its flow is judged (the line "
    "filling, the pressure building); default 10. Supervision needs a flow meter on the pump "
    "(a `flow` sensor with this `pump_id`) and an expected flow (`learned_flow_lpm`, else "
    "`nominal_flow_lpm`)."
)
_FLOW_CHECK = (
    "Seconds of readings whose mean flow is compared with the expected flow (they must span "
    "at least two of the meter's readings); default 10. A run is judged once this window "
    "lies wholly after `flow_settle_s`."
)
_LOW_FLOW = (
    "Percent of the expected flow: a mean below it stops the run (`stop_cause` `low_flow`, "
    "alert `low_flow`; below 5 %: `no_flow`, which also latches the pump's fault); "
    "default 50."
)
_HIGH_FLOW = (
    "Percent of the expected flow: a mean above it stops the run as a burst (`stop_cause` "
    "`high_flow`, alert `high_flow`) and latches the pump's fault; default 150."
)
_LEARNED_FLOW = (
    "What supervision expects, L/min: the median of the mean flows the meter measured over "
    "the pump's last 10 normal runs (not stopped for their flow), once 3 were measured; "
    "null until then, when `nominal_flow_lpm` is expected instead."
)
FlowSettleS = Annotated[int, Field(ge=0, le=3600)]
FlowCheckS = Annotated[int, Field(ge=1, le=3600)]
LowFlowPct = Annotated[int, Field(ge=1, le=99)]
HighFlowPct = Annotated[int, Field(ge=101, le=1000)]


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
        default=None, ge=1, description=_MAX_RUNTIME, json_schema_extra=_AT_MOST_THE_CAP
    )
    cooldown_s: CooldownSeconds | None = Field(default=None, description=_COOLDOWN)
    nominal_flow_lpm: FlowLpm | None = Field(default=None, description=_NOMINAL_FLOW)
    flow_settle_s: FlowSettleS = Field(default=10, description=_FLOW_SETTLE)
    flow_check_s: FlowCheckS = Field(default=10, description=_FLOW_CHECK)
    low_flow_pct: LowFlowPct = Field(default=50, description=_LOW_FLOW)
    high_flow_pct: HighFlowPct = Field(default=150, description=_HIGH_FLOW)
    enabled: bool = True


class PumpUpdate(UpdateBody):
    nullable = frozenset({"nominal_flow_lpm"})

    zone_id: uuid.UUID | None = None
    water_source_id: uuid.UUID | None = None
    name: Name | None = None
    hardware_id: HardwareId | None = Field(
        default=None, description="Not while the pump has an active run (409 `pump_running`)."
    )
    max_runtime_s: int | None = Field(
        default=None, ge=1, description=_MAX_RUNTIME, json_schema_extra=_AT_MOST_THE_CAP
    )
    cooldown_s: CooldownSeconds | None = Field(default=None, description=_COOLDOWN)
    nominal_flow_lpm: FlowLpm | None = Field(default=None, description=_NOMINAL_FLOW)
    flow_settle_s: FlowSettleS | None = Field(default=None, description=_FLOW_SETTLE)
    flow_check_s: FlowCheckS | None = Field(default=None, description=_FLOW_CHECK)
    low_flow_pct: LowFlowPct | None = Field(default=None, description=_LOW_FLOW)
    high_flow_pct: HighFlowPct | None = Field(default=None, description=_HIGH_FLOW)
    enabled: bool | None = None


class PumpOut(StoredOut):
    zone_id: uuid.UUID
    water_source_id: uuid.UUID
    name: str
    hardware_id: str
    max_runtime_s: int
    cooldown_s: int
    nominal_flow_lpm: float | None = Field(description=_NOMINAL_FLOW)
    flow_settle_s: int = Field(description=_FLOW_SETTLE)
    flow_check_s: int = Field(description=_FLOW_CHECK)
    low_flow_pct: int = Field(description=_LOW_FLOW)
    high_flow_pct: int = Field(description=_HIGH_FLOW)
    learned_flow_lpm: float | None = Field(description=_LEARNED_FLOW)
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
    min_value: Finite | None = Field(
        default=None,
        description="Readings below are out of range; must be below `max_value` (the stored "
        "one on PATCH). Null: the kind's default range.",
    )
    max_value: Finite | None = Field(
        default=None, description="Readings above are out of range; must be above `min_value`."
    )

    @model_validator(mode="after")
    def _range_order(self) -> Self:
        low, high = self.min_value, self.max_value
        if low is not None and high is not None and low >= high:
            raise ValueError("min_value must be below max_value")
        return self


class _AlertBand(Body):
    alert_min: Finite | None = Field(
        default=None,
        description="An alert is raised while the latest value is below this; must be below "
        "`alert_max` (the stored one on PATCH).",
    )
    alert_max: Finite | None = Field(
        default=None,
        description="An alert is raised while the latest value is above this; must be above "
        "`alert_min`.",
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


_PUMP_ID = (
    "A `flow` sensor's pump: the meter on this pump's line (flow supervision checks the "
    "pump's runs against it; water use integrates it). At most one sensor per pump; not "
    "with `water_source_id`. Other kinds cannot be attached (422)."
)
_SOURCE_ID = (
    "A `flow` sensor's water source: the meter on the source's main (leak detection while "
    "none of its pumps runs; water use). At most one sensor per source; not with `pump_id`."
)


class _Attachment(Body):
    pump_id: uuid.UUID | None = Field(default=None, description=_PUMP_ID)
    water_source_id: uuid.UUID | None = Field(default=None, description=_SOURCE_ID)

    @model_validator(mode="after")
    def _one_attachment(self) -> Self:
        if self.pump_id is not None and self.water_source_id is not None:
            raise ValueError("a sensor meters a pump or a water source, not both")
        return self


class SensorCreate(_RangeChecked, _AlertBand, _Attachment):
    zone_id: uuid.UUID
    name: Name
    kind: SensorKind
    unit: Unit

    @model_validator(mode="after")
    def _only_flow_attached(self) -> Self:
        attached = self.pump_id is not None or self.water_source_id is not None
        if attached and self.kind != SensorKind.flow:
            raise ValueError("only a flow sensor can be attached to a pump or a water source")
        return self


class SensorUpdate(_RangeChecked, _AlertBand, _Attachment, UpdateBody):
    nullable = frozenset(
        {
            "min_value",
            "max_value",
            "alert_min",
            "alert_max",
            "silent_after_s",
            "pump_id",
            "water_source_id",
        }
    )

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
    pump_id: uuid.UUID | None = Field(description=_PUMP_ID)
    water_source_id: uuid.UUID | None = Field(description=_SOURCE_ID)
