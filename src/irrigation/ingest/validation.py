"""Per-item checks of a batch: each bad item gets one reason; the good ones go through."""

import dataclasses
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter, itemgetter, le
from typing import Any, cast

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from irrigation.ingest.calibration import Calibration, calibrate
from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.rows import Columns
from irrigation.ingest.schemas import (
    MAX_BATCH,
    WIRE_FIELDS,
    ReadingIn,
    ReadingsBatch,
    WireReading,
)

MIN_QUALITY = 50
MAX_FUTURE = timedelta(minutes=5)


class _WireBatch(BaseModel):
    readings: list[WireReading] = Field(min_length=1, max_length=MAX_BATCH)


_wire_batch = TypeAdapter(_WireBatch)
_uuid = TypeAdapter(uuid.UUID)
_json_ts = TypeAdapter(datetime)
_one = TypeAdapter(ReadingIn)
_many = TypeAdapter(list[ReadingIn])


@dataclass(frozen=True)
class SensorSpec:
    """What an item is checked against: the sensor as configured in the caller's site."""

    unit: str
    low: float
    high: float
    zone_id: uuid.UUID | None = None
    calibration: Calibration | None = None
    """Its calibration history, if it has one: the range judges the calibrated value."""
    meter: bool = False
    """A flow sensor attached to a pump or a water source: water use integrates it."""


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
class Gathered:
    """Items gathered from many messages (the MQTT bridge): the typed ones as columns with
    their places in the batch, and the parse_errors, numbered in the same sequence."""

    typed: Columns
    positions: list[int]
    rejected: list[Rejected]

    def __len__(self) -> int:
        return len(self.typed) + len(self.rejected)


Parsed = Columns | list[ReadingIn | Rejected] | Gathered
"""A clean batch as columns, or item by item with a parse_error in each bad item's place, or
gathered from messages."""


@dataclass(frozen=True)
class Checked:
    accepted: Columns
    rejected: list[Rejected]
    # The zones of the accepted readings' sensors (their automation may need a look).
    zone_ids: set[uuid.UUID] = field(default_factory=set)
    # Each known sensor's zone: what its live `reading` event names.
    sensor_zones: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)
    # The batch's attached flow meters: their hours are marked for the water-use rollup.
    meters: frozenset[uuid.UUID] = frozenset()


def parse_batch(raw_body: bytes) -> Columns | list[ReadingIn | Rejected]:
    """Parse straight from the request bytes. A clean batch validates in one call, into
    columns; otherwise the envelope is checked (422 when it is broken, raised as
    ValidationError) and then each item on its own, the bad ones becoming parse_errors."""
    try:
        wire = _wire_batch.validate_json(raw_body).readings
    except ValidationError:
        pass
    else:
        if (columns := _columns(wire)) is not None:
            return columns
    envelope = ReadingsBatch.model_validate_json(raw_body)
    return parse_items(envelope.readings)


def _columns(items: list[WireReading]) -> Columns | None:
    """None when an item has a key of no reading or a sensor id that is not a UUID: the
    item-by-item parse names that item."""
    if not set().union(*items) <= WIRE_FIELDS:
        return None
    texts = list(map(itemgetter("sensor_id"), items))
    try:
        key_of = {text: _uuid.validate_python(text).bytes for text in set(texts)}
    except ValidationError:
        return None
    # Absent keys: their defaults, with C-level dict.get calls rather than a loop.
    plain = cast(list[dict[str, Any]], items)
    return Columns(
        list(map(key_of.__getitem__, texts)),
        list(map(itemgetter("ts"), items)),
        list(map(itemgetter("value"), items)),
        list(map(dict.get, plain, repeat("quality"), repeat(100))),
        list(map(dict.get, plain, repeat("unit"))),
    )


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


def sensor_ids(parsed: Parsed) -> set[uuid.UUID]:
    """The distinct sensors of the typed items."""
    if isinstance(parsed, Gathered):
        parsed = parsed.typed
    if isinstance(parsed, Columns):
        return {uuid.UUID(bytes=key) for key in set(parsed.sensors)}
    # By their `int` (a slot, and ints hash in C): `UUID.__hash__` is Python code.
    distinct = {item.sensor_id.int for item in parsed if isinstance(item, ReadingIn)}
    return {uuid.UUID(int=i) for i in distinct}


def check_items(
    parsed: Parsed,
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
    typed, positions, rejected = _split(parsed, offset)
    by_key = {sensor_id.bytes: spec for sensor_id, spec in sensors.items()}
    typed = _calibrated(typed, by_key)
    if not rejected and _all_good(typed, by_key, window):
        return Checked(typed, [])
    return _check_each(typed, positions, rejected, by_key, window, offset)


def check_each(
    parsed: Parsed, sensors: dict[uuid.UUID, SensorSpec], window: Window, offset: int = 0
) -> Checked:
    """Item by item, each bad one with its reason."""
    typed, positions, rejected = _split(parsed, offset)
    by_key = {sensor_id.bytes: spec for sensor_id, spec in sensors.items()}
    return _check_each(typed, positions, rejected, by_key, window, offset)


def _calibrated(typed: Columns, by_key: dict[bytes, SensorSpec]) -> Columns:
    """The items with the calibration of each one's time applied (their values as sent kept
    in `raws`); as they are when none of the batch's sensors has a calibration."""
    calibrations = {
        key: spec.calibration for key, spec in by_key.items() if spec.calibration is not None
    }
    return calibrate(typed, calibrations) if calibrations else typed


def _split(parsed: Parsed, offset: int) -> tuple[Columns, list[int] | None, list[Rejected]]:
    """The typed items as columns, their places in the batch (None: all of them, in order),
    and the parse_errors, numbered from `offset`."""
    if isinstance(parsed, Columns):
        return parsed, None, []
    if isinstance(parsed, Gathered):
        if not parsed.rejected:
            return parsed.typed, None, []
        rejected = [dataclasses.replace(r, index=r.index + offset) for r in parsed.rejected]
        return parsed.typed, parsed.positions, rejected
    typed = [item for item in parsed if isinstance(item, ReadingIn)]
    if len(typed) == len(parsed):
        return Columns.of(typed), None, []
    positions = [i for i, item in enumerate(parsed) if isinstance(item, ReadingIn)]
    rejected = [
        Rejected(i + offset, item.raw, item.reason, item.detail)
        for i, item in enumerate(parsed)
        if isinstance(item, Rejected)
    ]
    return Columns.of(typed), positions, rejected


def _check_each(
    typed: Columns,
    positions: list[int] | None,
    rejected: list[Rejected],
    by_key: dict[bytes, SensorSpec],
    window: Window,
    offset: int,
) -> Checked:
    typed = _calibrated(typed, by_key)
    kept: list[int] = []
    rejected = list(rejected)
    raws = typed.values if typed.raws is None else typed.raws
    items = zip(typed.sensors, typed.times, typed.values, typed.units, typed.qualities, strict=True)
    for k, (key, ts, value, unit, quality) in enumerate(items):
        spec = by_key.get(key)
        # The common case in one expression (a good item); `_judge` names what is wrong.
        # NaN fails the range comparison, a naive ts the tzinfo test, so both go to `_judge`.
        if (
            spec is not None
            and ts.tzinfo is not None
            and window.oldest <= ts <= window.latest
            and (unit is None or unit == spec.unit)
            and spec.low <= value <= spec.high
            and quality >= window.min_quality
        ):
            kept.append(k)
            continue
        sensor_id = uuid.UUID(bytes=key)
        reason, detail = _judge(sensor_id, ts, value, unit, quality, spec, window)
        if reason is None:
            kept.append(k)
            continue
        if reason == QuarantineReason.out_of_range and raws[k] != value:
            detail += f" (calibrated from the raw value {raws[k]})"
        # The item as sent: a reviewer corrects and approves what the sensor sent, which is
        # calibrated again then.
        raw = {"sensor_id": str(sensor_id), "ts": _json_ts.dump_python(ts, mode="json")}
        raw |= {"value": raws[k], "unit": unit, "quality": quality}
        if unit is None:
            del raw["unit"]
        index = (k if positions is None else positions[k]) + offset
        known = sensor_id if reason != QuarantineReason.unknown_sensor else None
        rejected.append(Rejected(index, raw, reason, detail, known))
    rejected.sort(key=attrgetter("index"))
    return Checked(typed.take(kept), rejected)


def _all_good(typed: Columns, by_key: dict[bytes, SensorSpec], window: Window) -> bool:
    """The usual batch, every item good, judged by columns with C-level builtins (min, max,
    set, map) instead of item by item: ~5 ms instead of ~11 for 10,000 items. False sends
    the batch through the item-by-item checks, which name each bad item's reason."""
    if not typed:
        return True
    keys = typed.sensors
    distinct = set(keys)
    if not distinct <= by_key.keys():
        return False
    times = typed.times
    if (
        not all(map(attrgetter("tzinfo"), times))
        or min(times) < window.oldest
        or max(times) > window.latest
    ):
        return False
    values = typed.values
    if not math.isfinite(sum(values)) or min(typed.qualities) < window.min_quality:
        return False
    # Sensors of one kind share a unit and a range (specs differ by zone): one comparison
    # for the batch. Otherwise each sensor's own, by C-level maps over its columns.
    kinds = {(s.unit, s.low, s.high) for s in map(by_key.__getitem__, distinct)}
    if len(kinds) == 1:
        ((unit, low, high),) = kinds
        return set(typed.units) <= {None, unit} and low <= min(values) and max(values) <= high
    lows = {key: by_key[key].low for key in distinct}
    highs = {key: by_key[key].high for key in distinct}
    return (
        all(u is None or u == by_key[k].unit for k, u in set(zip(keys, typed.units, strict=True)))
        and all(map(le, map(lows.__getitem__, keys), values))
        and all(map(le, values, map(highs.__getitem__, keys)))
    )


def _judge(
    sensor_id: uuid.UUID,
    ts: datetime,
    value: float,
    unit: str | None,
    quality: int,
    spec: SensorSpec | None,
    window: Window,
) -> tuple[QuarantineReason | None, str]:
    if spec is None:
        # Same answer whether the sensor is another site's or nobody's: no hint either way.
        return QuarantineReason.unknown_sensor, f"sensor {sensor_id} is not known"
    if ts.tzinfo is None or ts.utcoffset() is None:
        return QuarantineReason.invalid_timestamp, "ts has no time zone"
    if ts > window.latest:
        return QuarantineReason.invalid_timestamp, "ts is more than 5 minutes in the future"
    if ts < window.oldest:
        return QuarantineReason.invalid_timestamp, "ts is older than the raw retention"
    if unit is not None and unit != spec.unit:
        return QuarantineReason.invalid_unit, f"unit {unit!r} is not the sensor's {spec.unit!r}"
    if not (spec.low <= value <= spec.high) or math.isnan(value):
        return QuarantineReason.out_of_range, f"value {value} is outside [{spec.low}, {spec.high}]"
    if quality < window.min_quality:
        return QuarantineReason.low_quality, f"quality {quality} is below {window.min_quality}"
    return None, ""
