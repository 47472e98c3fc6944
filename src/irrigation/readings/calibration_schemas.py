"""API shapes of a sensor's calibration history and of calibration backfills."""

import uuid
from datetime import datetime
from typing import Annotated, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from irrigation.common.schemas import Body
from irrigation.readings.models import BackfillStatus

MAX_GAIN = 1e6
# Strict: a JSON string is the wrong type, not a number to coerce (JSON integers count).
Coefficient = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e9, le=1e9)]
Gain = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_GAIN, le=MAX_GAIN)]


class CalibrationCreate(Body):
    """Either `gain` (and `offset`) or `raw_dry` and `raw_wet`."""

    effective_from: AwareDatetime | None = Field(
        default=None,
        description="From when on it applies, with a UTC offset; default now. Between 1900 "
        "and 366 days ahead; one per instant and sensor (409 `duplicate`). Readings stored "
        "already keep their values until a backfill (`POST .../calibrations/backfill`).",
    )
    gain: Gain | None = Field(
        default=None, description="value = gain x raw + offset; not 0. With `offset`."
    )
    offset: Coefficient | None = Field(
        default=None, description="Added after the gain; default 0 (with `gain` only)."
    )
    raw_dry: Coefficient | None = Field(
        default=None,
        description="The raw value that means 0 % (dry); with `raw_wet`, instead of `gain`.",
    )
    raw_wet: Coefficient | None = Field(
        default=None,
        description="The raw value that means 100 % (wet); may be below `raw_dry` (sensors "
        "that read lower when wet). The two points must be at least 0.0001 apart.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        linear = self.gain is not None or self.offset is not None
        two_point = self.raw_dry is not None or self.raw_wet is not None
        if linear == two_point:
            raise ValueError("give either gain (and offset) or raw_dry and raw_wet")
        if linear and self.gain is None:
            raise ValueError("offset needs a gain")
        if self.gain == 0:
            raise ValueError("gain must not be 0")
        if two_point:
            if self.raw_dry is None or self.raw_wet is None:
                raise ValueError("raw_dry and raw_wet go together")
            if abs(self.raw_wet - self.raw_dry) < 100 / MAX_GAIN:
                raise ValueError("raw_dry and raw_wet must be at least 0.0001 apart")
        return self

    def coefficients(self) -> tuple[float, float]:
        """(gain, offset): a two-point calibration is the line through (raw_dry, 0) and
        (raw_wet, 100); raw_dry maps to exactly 0."""
        if self.raw_dry is not None and self.raw_wet is not None:
            gain = 100.0 / (self.raw_wet - self.raw_dry)
            return gain, -(gain * self.raw_dry)
        assert self.gain is not None
        return self.gain, self.offset or 0.0


class CalibrationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    site_id: uuid.UUID
    sensor_id: uuid.UUID
    effective_from: datetime
    gain: float = Field(description="value = gain x raw + offset (a two-point one's too).")
    offset: float
    raw_dry: float | None = Field(description="The two points, if it was given by them.")
    raw_wet: float | None
    created_at: datetime


class BackfillCreate(Body):
    start: AwareDatetime = Field(
        alias="from",
        description="Inclusive, with a UTC offset; not older than the raw retention "
        "(`IRRIGATION_RAW_RETENTION_DAYS`): older readings have no raw value left.",
    )
    end: AwareDatetime = Field(
        alias="to",
        description="Exclusive, after `from`, at most 366 days after it. A later time than "
        "readings can have (5 minutes ahead) counts as that.",
    )


class BackfillOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sensor_id: uuid.UUID
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    status: BackfillStatus
    done_until: datetime = Field(
        description="Every reading before this instant is done (from `from` to `to`)."
    )
    readings_updated: int = Field(description="Readings whose value (or raw value) changed.")
    hours_rolled_up: int = Field(description="Hourly rollups whose totals changed.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
