"""API shapes of water use."""

import uuid
from datetime import date
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# Bounds of a request: a year of days, ten years of months.
MAX_DAYS = 366
MAX_MONTHS = 120


class WaterUseScope(StrEnum):
    zone = "zone"
    pump = "pump"
    water_source = "water_source"
    site = "site"


class WaterUsePeriod(StrEnum):
    day = "day"
    month = "month"


_LITRES = "`measured_litres` + `estimated_litres`."
_MEASURED = "Integrated from the readings of attached flow meters."
_ESTIMATED = "Runtime x the pump's `nominal_flow_lpm`, for runs of pumps without an attached meter."
_IS_ESTIMATED = "True when any part of `litres` came from runtime x nominal flow."
_WITHOUT_FLOW = (
    "Seconds of runs whose water is not known (their pump had neither an attached meter "
    "nor a `nominal_flow_lpm`): not in `litres`."
)


class WaterUseBucket(BaseModel):
    start: date = Field(description="The local day, or the first day of the month.")
    litres: float = Field(description=_LITRES)
    measured_litres: float = Field(description=_MEASURED)
    estimated_litres: float = Field(description=_ESTIMATED)
    estimated: bool = Field(description=_IS_ESTIMATED)
    runtime_without_flow_s: float = Field(description=_WITHOUT_FLOW)


class WaterUse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    scope: WaterUseScope
    id: uuid.UUID = Field(description="The zone, pump, water source or site.")
    bucket: WaterUsePeriod
    from_: date = Field(alias="from", description="The first local day counted.")
    to: date = Field(description="The last local day counted.")
    timezone: str | None = Field(
        description="The zone's time zone (a pump's: its zone's) that the days follow. Null "
        "for a water source or the site: each part counts in the local days of its own zone, "
        "summed by date."
    )
    litres: float = Field(description=f"The whole period: {_LITRES}")
    measured_litres: float = Field(description=_MEASURED)
    estimated_litres: float = Field(description=_ESTIMATED)
    estimated: bool = Field(description=_IS_ESTIMATED)
    runtime_without_flow_s: float = Field(description=_WITHOUT_FLOW)
    buckets: list[WaterUseBucket] = Field(
        description="Every day (or month) from `from` to `to`, oldest first, empty ones as 0; "
        "a month at either end counts only its days within the period."
    )
