"""API shapes of automation: rules, schedules, the run queue, decisions, delays, pause."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict

from irrigation.automation.calendar import Weekday, When
from irrigation.automation.models import Outcome, RunStatus
from irrigation.common.schemas import Body, NotBlankText, StoredOut, UpdateBody
from irrigation.common.text import NoNul
from irrigation.fleet.schemas import Finite, SensorKind
from irrigation.pumps.models import Priority

RuleName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    NoNul,
    NotBlankText,
]
Duration = Annotated[int, Field(ge=1, le=3600, description="Run time of each pump, seconds.")]
WindowSeconds = Annotated[int, Field(ge=60, le=86400)]
MaxAgeSeconds = Annotated[int, Field(ge=10, le=86400)]
MinReadings = Annotated[int, Field(ge=1, le=10000)]


def _cron_field(value: str) -> str:
    """`*` or a value or range, each with an optional step; a comma-separated list of those."""
    item = rf"(\*|({value})(-({value}))?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAYS = "sun|mon|tue|wed|thu|fri|sat"
# The grammar the schedule's cron check (croniter) accepts, field by field with each field's
# range, in its common form (croniter also knows `L`, `W`, `#`, `?` and capitals: still
# accepted, not advertised). Documentation only: the check itself stays croniter's.
CRON_PATTERN = (
    "^"
    + " ".join(
        _cron_field(value)
        for value in (
            "[0-5]?[0-9]",
            "[01]?[0-9]|2[0-3]",
            "0?[1-9]|[12][0-9]|3[01]",
            f"0?[1-9]|1[0-2]|{_MONTHS}",
            f"[0-7]|{_DAYS}",
        )
    )
    + "$"
)
Cron = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    NoNul,
    Field(
        description="5-field cron expression (minute hour day-of-month month day-of-week) in "
        "the zone's local time, e.g. `0 6 * * 1-5`: `*`, values, ranges, steps and lists, "
        "month and day names (`jan`, `mon`; 0 and 7 are Sunday). No seconds, years, "
        "`@daily` aliases or `H`/`R`; a date that never exists (`0 0 30 2 *`) is refused. "
        "Either `cron` or `start_times`, not both.",
        json_schema_extra={"pattern": CRON_PATTERN},
    ),
]
# The document states calendar's own HH:MM check (00:00-23:59), which answers "25:00".
StartTime = Annotated[
    str,
    StringConstraints(pattern=r"^\d{2}:\d{2}$"),
    Field(json_schema_extra={"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}),
]
_WEEKDAYS = "With `start_times`, never with `cron`; each day once. Omitted: every day."
_START_TIMES = (
    "Local `HH:MM` times, each once. Either `start_times` or `cron`, not both; one of them is "
    "required."
)


# Threshold rules -----------------------------------------------------------------------


_START_BELOW = (
    "Ask for water when the average falls below this; must be below `stop_above` (the "
    "stored one on PATCH)."
)
_STOP_ABOVE = "Hysteresis: trigger again only after the average rose above this."
_MIN_READINGS = (
    "The rule acts only with at least this many readings (of all the zone's sensors of "
    "`sensor_kind`) in its window; with fewer it does nothing and its zone's decisions show "
    "`stale_sensor`, once until it has enough again."
)
_MAX_AGE = (
    "The rule acts only when the newest reading of its window is at most this old (seconds); "
    "otherwise as with too few readings (`stale_sensor`). Only the window's readings count, "
    "so a value at or above `window_s` sets no limit of its own."
)
_MOISTURE_MAX_AGE = (
    "The moisture skip averages the zone's soil moisture readings at most this old "
    "(seconds). With none, the moisture is unknown: the run goes ahead and its decision "
    "says so, naming the newest reading's age."
)


class ThresholdRuleCreate(Body):
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None = Field(
        default=None, description="Omitted: every enabled pump of the zone, one after another."
    )
    name: RuleName | None = None
    sensor_kind: SensorKind = SensorKind.soil_moisture
    window_s: WindowSeconds = Field(
        default=900, description="The average of the zone's sensors over this window."
    )
    start_below: Finite = Field(description=_START_BELOW)
    stop_above: Finite = Field(description=_STOP_ABOVE)
    duration_s: Duration
    enabled: bool = True
    min_readings: MinReadings = Field(default=1, description=_MIN_READINGS)
    max_age_s: MaxAgeSeconds = Field(default=900, description=_MAX_AGE)

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.start_below >= self.stop_above:
            raise ValueError("start_below must be below stop_above")
        return self


class ThresholdRuleUpdate(UpdateBody):
    nullable = frozenset({"name", "pump_id"})

    pump_id: uuid.UUID | None = None
    name: RuleName | None = None
    sensor_kind: SensorKind | None = None
    window_s: WindowSeconds | None = None
    start_below: Finite | None = Field(default=None, description=_START_BELOW)
    stop_above: Finite | None = Field(default=None, description=_STOP_ABOVE)
    duration_s: Duration | None = None
    enabled: bool | None = None
    min_readings: MinReadings | None = Field(default=None, description=_MIN_READINGS)
    max_age_s: MaxAgeSeconds | None = Field(default=None, description=_MAX_AGE)


class ThresholdRuleOut(StoredOut):
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None
    name: str | None
    sensor_kind: str
    window_s: int
    start_below: float
    stop_above: float
    duration_s: int
    enabled: bool
    min_readings: int
    max_age_s: int
    armed: bool = Field(description="False after a trigger, until the value rose above stop_above.")
    last_value: float | None
    last_evaluated_at: datetime | None
    last_triggered_at: datetime | None


# Schedules -----------------------------------------------------------------------------


# Duplicates are refused (calendar.When); JSON Schema can say so.
_UNIQUE: JsonDict = {"uniqueItems": True}


_GIVEN: JsonDict = {"type": "string"}
_SOME: JsonDict = {"type": "array", "minItems": 1}
_NONE: JsonDict = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
# calendar.When's rules between fields, as JSON Schema can say them: never both `cron` and
# `start_times`, nor `cron` with `weekdays`; on create, never neither (on update that also
# depends on the stored schedule). `not`, not `oneOf`: client generators turn a top-level
# `oneOf` into a union of partial models.
_BOTH: list[JsonValue] = [
    {"required": ["cron", "start_times"], "properties": {"cron": _GIVEN, "start_times": _SOME}},
    {"required": ["cron", "weekdays"], "properties": {"cron": _GIVEN, "weekdays": _SOME}},
]
_NEITHER: JsonDict = {"properties": {"cron": {"type": "null"}, "start_times": _NONE}}
_ZONE = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
_CREATE_WHEN: JsonDict = {
    "not": {"anyOf": [*_BOTH, _NEITHER]},
    "examples": [
        {"zone_id": _ZONE, "cron": "0 6 * * 1-5", "duration_s": 600},
        {
            "zone_id": _ZONE,
            "weekdays": ["mon", "thu"],
            "start_times": ["06:00", "18:30"],
            "duration_s": 300,
        },
    ],
}
_UPDATE_WHEN: JsonDict = {"not": {"anyOf": [*_BOTH]}}


class ScheduleCreate(Body):
    """When: either `cron`, or `start_times` (on `weekdays`, or every day)."""

    model_config = ConfigDict(json_schema_extra=_CREATE_WHEN)

    zone_id: uuid.UUID
    pump_id: uuid.UUID | None = Field(
        default=None, description="Omitted: every enabled pump of the zone, one after another."
    )
    name: RuleName | None = None
    cron: Cron | None = Field(default=None, examples=["0 6 * * *"])
    weekdays: list[Weekday] | None = Field(
        default=None, max_length=7, description=_WEEKDAYS, json_schema_extra=_UNIQUE
    )
    start_times: list[StartTime] | None = Field(
        default=None,
        max_length=48,
        description=_START_TIMES,
        examples=[["06:00"]],
        json_schema_extra=_UNIQUE,
    )
    duration_s: Duration
    enabled: bool = True
    max_delay_s: int = Field(
        default=3600, ge=60, le=86400, description="How late a run may still start."
    )
    skip_if_moisture_above: Finite | None = Field(
        default=None,
        description="Skip when the zone's soil moisture (the mean of the readings at most "
        "`moisture_max_age_s` old) is above.",
    )
    moisture_max_age_s: MaxAgeSeconds = Field(default=900, description=_MOISTURE_MAX_AGE)
    skip_if_rain_delay: bool = True
    skip_if_rain_forecast_mm: float | None = Field(
        default=None, ge=0, le=1000, description="Skip when at least this much rain is forecast."
    )

    @model_validator(mode="after")
    def _valid_when(self) -> Self:
        When.parse(self.cron, self.weekdays, self.start_times)
        return self


class ScheduleUpdate(UpdateBody):
    """To switch from `start_times` to `cron`, send `start_times` (and `weekdays`) as null;
    from `cron` to `start_times`, send `cron` as null."""

    schema_rules = _UPDATE_WHEN
    nullable = frozenset(
        {
            "name",
            "pump_id",
            "cron",
            "weekdays",
            "start_times",
            "skip_if_moisture_above",
            "skip_if_rain_forecast_mm",
        }
    )

    pump_id: uuid.UUID | None = None
    name: RuleName | None = None
    cron: Cron | None = None
    weekdays: list[Weekday] | None = Field(
        default=None, max_length=7, description=_WEEKDAYS, json_schema_extra=_UNIQUE
    )
    start_times: list[StartTime] | None = Field(
        default=None, max_length=48, description=_START_TIMES, json_schema_extra=_UNIQUE
    )
    duration_s: Duration | None = None
    enabled: bool | None = None
    max_delay_s: int | None = Field(default=None, ge=60, le=86400)
    skip_if_moisture_above: Finite | None = None
    moisture_max_age_s: MaxAgeSeconds | None = Field(default=None, description=_MOISTURE_MAX_AGE)
    skip_if_rain_delay: bool | None = None
    skip_if_rain_forecast_mm: float | None = Field(default=None, ge=0, le=1000)


class ScheduleOut(StoredOut):
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None
    name: str | None
    cron: str | None
    weekdays: list[str] | None
    start_times: list[str] | None
    duration_s: int
    enabled: bool
    max_delay_s: int
    skip_if_moisture_above: float | None
    moisture_max_age_s: int
    skip_if_rain_delay: bool
    skip_if_rain_forecast_mm: float | None
    next_run_at: datetime | None = Field(description="The next local start, in UTC.")
    last_run_at: datetime | None


# Run queue, decisions, delays ----------------------------------------------------------


class RunRequestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: Literal["run_request"] = "run_request"
    id: uuid.UUID
    site_id: uuid.UUID
    zone_id: uuid.UUID
    pump_id: uuid.UUID
    priority: Priority
    queue: str | None
    status: RunStatus
    duration_s: int
    reason: str | None
    origin: str
    rule_id: uuid.UUID | None
    schedule_id: uuid.UUID | None
    after_id: uuid.UUID | None
    deadline: datetime
    activation_id: uuid.UUID | None = Field(description="Set once the run started.")
    last_reason: str | None = Field(description="Why it waits, or why it ended.")
    bypass_count: int = Field(
        description="How many runs of its water source started ahead of it while it waited "
        "for the source's flow (`IRRIGATION_RUNQUEUE_MAX_BYPASS` at most)."
    )
    watering_id: uuid.UUID | None = Field(
        description="The automated watering (a schedule's or threshold rule's) it is part "
        "of: every pump and cycle of one watering shares it. Null for a person's request."
    )
    cycle: int | None = Field(
        description="Which of its pump's `cycles` in the watering this is (cycle-and-soak: "
        "the zone's `max_cycle_s`); 1 of 1 for a watering that is not split."
    )
    cycles: int | None = Field(description="How many cycles its pump runs in the watering.")
    soak_s: int = Field(
        description="Starts at least this long after the watering's previous run "
        "(`after_id`) ended: the zone's `min_soak_s` before a cycle, else 0."
    )
    created_at: datetime
    resolved_at: datetime | None


class DecisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None
    rule_id: uuid.UUID | None
    schedule_id: uuid.UUID | None
    run_request_id: uuid.UUID | None
    activation_id: uuid.UUID | None
    watering_id: uuid.UUID | None = Field(
        description="The watering of the run request (one id for every pump and cycle of an "
        "automated watering)."
    )
    at: datetime
    outcome: Outcome
    reason: str = Field(description="Machine-readable, e.g. `rain_delay`, `cooldown`.")
    message: str = Field(description="A sentence for people.")
    detail: dict[str, Any] | None


class Until(Body):
    until: AwareDatetime = Field(
        description="When it ends, with a UTC offset: in the future (422 `validation_error` "
        "otherwise) and at most 366 days ahead (422 `until_too_far` beyond)."
    )


class AutomationState(BaseModel):
    paused_until: datetime | None
    rain_delay_until: datetime | None
