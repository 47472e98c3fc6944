"""The batch-wide check (columns, C-level builtins) must judge exactly as the item-by-item
one: on random batches, every kind of bad item alone or mixed, both give the same accepted
items and the same reasons."""

import random
import uuid
from datetime import UTC, datetime, timedelta

from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.rows import Columns
from irrigation.ingest.schemas import ReadingIn
from irrigation.ingest.validation import (
    MAX_FUTURE,
    Rejected,
    SensorSpec,
    Window,
    check_each,
    check_items,
)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RETENTION = timedelta(days=30)
MOISTURE = SensorSpec("%", 0.0, 100.0)
TEMPERATURE = SensorSpec("C", -40.0, 120.0)


def good(rng: random.Random, sensor: uuid.UUID, spec: SensorSpec) -> ReadingIn:
    return ReadingIn(
        sensor_id=sensor,
        ts=NOW - timedelta(seconds=rng.randint(0, 86_400)),
        value=rng.uniform(spec.low, spec.high),
        unit=rng.choice([None, spec.unit]),
        quality=rng.randint(50, 100),
    )


def spoil(rng: random.Random, item: ReadingIn, spec: SensorSpec) -> ReadingIn | Rejected:
    match rng.randrange(8):
        case 0:
            return ReadingIn(sensor_id=uuid.uuid4(), ts=item.ts, value=item.value)
        case 1:
            return ReadingIn(sensor_id=item.sensor_id, ts=item.ts.replace(tzinfo=None), value=1)
        case 2:
            ts = NOW + MAX_FUTURE + timedelta(seconds=1)
            return ReadingIn(sensor_id=item.sensor_id, ts=ts, value=item.value)
        case 3:
            ts = NOW - RETENTION - timedelta(seconds=1)
            return ReadingIn(sensor_id=item.sensor_id, ts=ts, value=item.value)
        case 4:
            return ReadingIn(sensor_id=item.sensor_id, ts=item.ts, value=item.value, unit="bar")
        case 5:
            value = rng.choice([spec.low - 0.001, spec.high + 0.001])
            return ReadingIn(sensor_id=item.sensor_id, ts=item.ts, value=value)
        case 6:
            return ReadingIn(sensor_id=item.sensor_id, ts=item.ts, value=item.value, quality=49)
        case _:
            return Rejected(0, {"x": 1}, QuarantineReason.parse_error, "x: extra")


def test_the_batch_wide_check_agrees_with_the_item_by_item_one() -> None:
    rng = random.Random(20261206)
    for trial in range(300):
        kinds = [MOISTURE] if trial % 2 else [MOISTURE, TEMPERATURE]
        sensors = {uuid.uuid4(): rng.choice(kinds) for _ in range(rng.randint(1, 5))}
        pairs = list(sensors.items())
        batch: list[ReadingIn | Rejected] = []
        for _ in range(rng.randint(1, 60)):
            sensor, spec = rng.choice(pairs)
            item = good(rng, sensor, spec)
            batch.append(spoil(rng, item, spec) if rng.random() < 0.02 else item)
        fast = check_items(batch, sensors, NOW, RETENTION, offset=7)
        slow = check_each(batch, sensors, Window.of(NOW, RETENTION, 50), offset=7)
        assert fast == slow, trial


def test_a_spec_boundary_is_still_good() -> None:
    sensor = uuid.uuid4()
    batch: list[ReadingIn | Rejected] = [
        ReadingIn(sensor_id=sensor, ts=NOW - RETENTION, value=0.0, quality=50),
        ReadingIn(sensor_id=sensor, ts=NOW + MAX_FUTURE, value=100.0, unit="%"),
    ]
    assert check_items(batch, {sensor: MOISTURE}, NOW, RETENTION).accepted == Columns.of(batch)
