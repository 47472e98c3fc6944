"""API shapes of aggregates and raw readings."""

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

MAX_BUCKETS = 10_000


class Bucket(StrEnum):
    hour = "hour"
    day = "day"


class Point(BaseModel):
    start: datetime = Field(description="Start of the bucket, in the zone's local time.")
    avg: float | None
    min: float | None
    max: float | None
    count: int


class SensorAggregates(BaseModel):
    sensor_id: uuid.UUID
    bucket: Bucket
    timezone: str
    points: list[Point]


class SensorSeries(BaseModel):
    sensor_id: uuid.UUID
    points: list[Point]


class ZoneAggregates(BaseModel):
    zone_id: uuid.UUID
    kind: str
    bucket: Bucket
    timezone: str
    sensor_ids: list[uuid.UUID]
    points: list[Point] | None = Field(
        default=None, description="All the zone's sensors of the kind, combined."
    )
    series: list[SensorSeries] | None = Field(
        default=None, description="One series per sensor (`per_sensor=true`)."
    )


class ReadingOut(BaseModel):
    ts: datetime
    value: float = Field(
        description="The calibrated value (the sensor's calibration in effect at `ts`), what "
        "aggregates, rules and alerts read."
    )
    quality: int
    raw_value: float = Field(
        description="What the sensor sent; equal to `value` where no calibration applied."
    )
