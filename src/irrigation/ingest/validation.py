"""Per-item checks of a batch: each bad item gets one reason; the good ones go through."""

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter, le
from typing import Any, cast

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.schemas import MAX_BATCH, ReadingIn, ReadingsBatch

MIN_QUALITY = 50
MAX_FUTURE = timedelta(minutes=5)


class _TypedBatch(BaseModel):
    readings: list[ReadingIn] = Field(min_length=1, max_length=MAX_BATCH)


_typed_batch = TypeAdapter(_TypedBatch)
_one = TypeAdapter(ReadingIn)
_many = TypeAdapter(list[ReadingIn])


@dataclass(frozen=True)
class SensorSpec:
    """What an item is checked against: the sensor as configured in the caller's site."""

    unit: str
    low: float
    high: float
    zone_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Window:
    """What every item is held to besides its sensor: a time window (the raw retention back,
    5 minutes ahead), and the lowest quality (a reviewer's approval lowers it)."""

    oldest: datetime
    latest: datetime
    min_quality: int

    @classmethod
    def of(cls, now: datetime, retention: timedelta, min_quality: int) -> "Window":
        return cls(now - retention, now + MAX_FUTURE, min_quality)


@dataclass(frozen=True)
class Rejected:
    index: int
    raw: Any
    reason: QuarantineReason
    detail: str
    sensor_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Checked:
    accepted: list[ReadingIn]
    rejected: list[Rejected]
    # The zones of the accepted readings' sensors (their automation may need a look).
    zone_ids: set[uuid.UUID] = field(default_factory=set)


def parse_batch(raw_body: bytes) -> list[ReadingIn | Rejected]:
    """Parse straight from the request bytes. A clean batch validates in one call; otherwise
    the envelope is checked (422 when it is broken, raised as ValidationError) and then each
    item on its own, the bad ones becoming parse_errors."""
    try:
        return list(_typed_batch.validate_json(raw_body).readings)
    except ValidationError:
        pass
    envelope = ReadingsBatch.model_validate_json(raw_body)
    return parse_items(envelope.readings)


def parse_items(raw_items: list[Any]) -> list[ReadingIn | Rejected]:
    """Typed items, or a parse_error for each item of the wrong shape."""
    try:
        return list(_many.validate_python(raw_items))
    except ValidationError:
        pass
    parsed: list[ReadingIn | Rejected] = []
    for index, raw in enumerate(raw_items):
        try:
            parsed.append(_one.validate_python(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "item"
            parsed.append(
                Rejected(index, raw, QuarantineReason.parse_error, f"{where}: {first['msg']}")
            )
    return parsed


def sensor_ids(parsed: list[ReadingIn | Rejected]) -> set[uuid.UUID]:
    """The distinct sensors of the typed items, gathered by their `int` (a slot, and ints
    hash in C): `UUID.__hash__` is Python code, 2 ms for a 10,000-item batch."""
    distinct = {item.sensor_id.int for item in parsed if isinstance(item, ReadingIn)}
    return {uuid.UUID(int=i) for i in distinct}


def check_items(
    parsed: list[ReadingIn | Rejected],
    sensors: dict[uuid.UUID, SensorSpec],
    now: datetime,
    retention: timedelta,
    offset: int = 0,
    *,
    min_quality: int = MIN_QUALITY,
) -> Checked:
    """`offset` numbers the items within a larger file (import chunks); `min_quality` is
    lowered by a reviewer's approval, the human override of the quality flag."""
    window = Window.of(now, retention, min_quality)
    if _all_good(parsed, sensors, window):
        return Checked(cast(list[ReadingIn], parsed), [])
    return check_each(parsed, sensors, window, offset)


def check_each(
    parsed: list[ReadingIn | Rejected],
    sensors: dict[uuid.UUID, SensorSpec],
    window: Window,
    offset: int = 0,
) -> Checked:
    """Item by item, each bad one with its reason."""
    accepted: list[ReadingIn] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(parsed, start=offset):
        if isinstance(item, Rejected):
            rejected.append(Rejected(index, item.raw, item.reason, item.detail))
            continue
        spec = sensors.get(item.sensor_id)
        # The common case in one expression (a good item); `_judge` names what is wrong.
        # NaN fails the range comparison, a naive ts the tzinfo test, so both go to `_judge`.
        if (
            spec is not None
            and item.ts.tzinfo is not None
            and window.oldest <= item.ts <= window.latest
            and (item.unit is None or item.unit == spec.unit)
            and spec.low <= item.value <= spec.high
            and item.quality >= window.min_quality
        ):
            accepted.append(item)
            continue
        reason, detail = _judge(item, spec, window)
        if reason is None:
            accepted.append(item)
        else:
            known = item.sensor_id if reason != QuarantineReason.unknown_sensor else None
            raw = _one.dump_python(item, mode="json", exclude_none=True)
            rejected.append(Rejected(index, raw, reason, detail, known))
    return Checked(accepted, rejected)


def _all_good(
    parsed: list[ReadingIn | Rejected], sensors: dict[uuid.UUID, SensorSpec], window: Window
) -> bool:
    """The usual batch, every item good, judged by columns with C-level builtins (min, max,
    set, map) instead of item by item: ~5 ms instead of ~11 for 10,000 items. False sends
    the batch through the item-by-item checks, which name each bad item's reason."""
    if not parsed or set(map(type, parsed)) != {ReadingIn}:
        return False
    items = cast(list[ReadingIn], parsed)
    # `UUID.__hash__` is Python code; its `int` is a slot, and ints hash in C.
    by_int = {sensor_id.int: spec for sensor_id, spec in sensors.items()}
    ids = [r.sensor_id.int for r in items]
    distinct = set(ids)
    if not distinct <= by_int.keys():
        return False
    times = [r.ts for r in items]
    if (
        not all(map(attrgetter("tzinfo"), times))
        or min(times) < window.oldest
        or max(times) > window.latest
    ):
        return False
    values = [r.value for r in items]
    if not math.isfinite(sum(values)) or min(r.quality for r in items) < window.min_quality:
        return False
    units = {r.unit for r in items}
    kinds = {by_int[i] for i in distinct}
    if len(kinds) == 1:
        (spec,) = kinds
        return units <= {None, spec.unit} and spec.low <= min(values) and max(values) <= spec.high
    specs = list(map(by_int.__getitem__, ids))
    return (
        all(map(le, [s.low for s in specs], values))
        and all(map(le, values, [s.high for s in specs]))
        and (
            units == {None}
            or all(
                u is None or u == s.unit
                for u, s in zip([r.unit for r in items], specs, strict=True)
            )
        )
    )


def _judge(
    item: ReadingIn, spec: SensorSpec | None, window: Window
) -> tuple[QuarantineReason | None, str]:
    if spec is None:
        # Same answer whether the sensor is another site's or nobody's: no hint either way.
        return QuarantineReason.unknown_sensor, f"sensor {item.sensor_id} is not known"
    if item.ts.tzinfo is None or item.ts.utcoffset() is None:
        return QuarantineReason.invalid_timestamp, "ts has no time zone"
    if item.ts > window.latest:
        return QuarantineReason.invalid_timestamp, "ts is more than 5 minutes in the future"
    if item.ts < window.oldest:
        return QuarantineReason.invalid_timestamp, "ts is older than the raw retention"
    if item.unit is not None and item.unit != spec.unit:
        return (
            QuarantineReason.invalid_unit,
            f"unit {item.unit!r} is not the sensor's {spec.unit!r}",
        )
    if not (spec.low <= item.value <= spec.high) or math.isnan(item.value):
        return (
            QuarantineReason.out_of_range,
            f"value {item.value} is outside [{spec.low}, {spec.high}]",
        )
    if item.quality < window.min_quality:
        return (
            QuarantineReason.low_quality,
            f"quality {item.quality} is below {window.min_quality}",
        )
    return None, ""
