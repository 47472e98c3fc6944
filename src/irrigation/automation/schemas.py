"""API shapes of automation: rules, schedules, the run queue, decisions, delays, pause."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from irrigation.automation.calendar import Weekday, When
from irrigation.automation.models import Outcome, RunStatus
from irrigation.common.schemas import Body, StoredOut, UpdateBody
from irrigation.common.text import NoNul
from irrigation.fleet.schemas import Finite, SensorKind
from irrigation.pumps.models import Priority

RuleName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NoNul
]
Duration = Annotated[int, Field(ge=1, le=3600, description="Run time of each pump, seconds.")]
WindowSeconds = Annotated[int, Field(ge=60, le=86400)]
Cron = Annotated[str, StringConstraints(min_length=1, max_length=100), NoNul]
StartTime = Annotated[str, StringConstraints(pattern=r"^\d{2}:\d{2}$")]


# Threshold rules -----------------------------------------------------------------------


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
    start_below: Finite = Field(description="Ask for water when the average falls below this.")
    stop_above: Finite = Field(
        description="Hysteresis: trigger again only after the average rose above this."
    )
    duration_s: Duration
    enabled: bool = True

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
    start_below: Finite | None = None
    stop_above: Finite | None = None
    duration_s: Duration | None = None
    enabled: bool | None = None


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
    armed: bool = Field(description="False after a trigger, until the value rose above stop_above.")
    last_value: float | None
    last_evaluated_at: datetime | None
    last_triggered_at: datetime | None


# Schedules -----------------------------------------------------------------------------


class ScheduleCreate(Body):
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None = Field(
        default=None, description="Omitted: every enabled pump of the zone, one after another."
    )
    name: RuleName | None = None
    cron: Cron | None = Field(
        default=None,
        description="5-field cron expression in the zone's local time, e.g. `0 6 * * 1-5`.",
        examples=["0 6 * * *"],
    )
    weekdays: list[Weekday] | None = Field(
        default=None, max_length=7, description="With `start_times`; omitted: every day."
    )
    start_times: list[StartTime] | None = Field(
        default=None, max_length=48, description="Local `HH:MM` times.", examples=[["06:00"]]
    )
    duration_s: Duration
    enabled: bool = True
    max_delay_s: int = Field(
        default=3600, ge=60, le=86400, description="How late a run may still start."
    )
    skip_if_moisture_above: Finite | None = Field(
        default=None, description="Skip when the zone's soil moisture (15-min mean) is above."
    )
    skip_if_rain_delay: bool = True
    skip_if_rain_forecast_mm: float | None = Field(
        default=None, ge=0, le=1000, description="Skip when at least this much rain is forecast."
    )

    @model_validator(mode="after")
    def _valid_when(self) -> Self:
        When.parse(self.cron, self.weekdays, self.start_times)
        return self


class ScheduleUpdate(UpdateBody):
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
    weekdays: list[Weekday] | None = Field(default=None, max_length=7)
    start_times: list[StartTime] | None = Field(default=None, max_length=48)
    duration_s: Duration | None = None
    enabled: bool | None = None
    max_delay_s: int | None = Field(default=None, ge=60, le=86400)
    skip_if_moisture_above: Finite | None = None
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
    at: datetime
    outcome: Outcome
    reason: str = Field(description="Machine-readable, e.g. `rain_delay`, `cooldown`.")
    message: str = Field(description="A sentence for people.")
    detail: dict[str, Any] | None


class Until(Body):
    until: AwareDatetime = Field(description="When it ends (with a UTC offset).")


class AutomationState(BaseModel):
    paused_until: datetime | None
    rain_delay_until: datetime | None
