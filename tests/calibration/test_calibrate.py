"""The array calibration (ingest/calibration.py) against a plain loop over the items: each
item gets the step of its own time, whatever the batch's order, sensors and bad items."""

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

from irrigation.ingest.calibration import Calibration, calibrate
from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.rows import Columns, encode
from irrigation.ingest.schemas import ReadingIn
from irrigation.ingest.validation import SensorSpec, Window, check_each, check_items

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RETENTION = timedelta(days=30)
PLUS_2 = timezone(timedelta(hours=2))


def _steps(rng: random.Random) -> list[tuple[datetime, float, float]]:
    starts = sorted({NOW - timedelta(hours=rng.randint(0, 48)) for _ in range(rng.randint(1, 4))})
    return [(start, rng.choice([-2.0, 0.5, 3.0]), rng.uniform(-5, 5)) for start in starts]


def _expected(steps: list[tuple[datetime, float, float]], ts: datetime, raw: float) -> float:
    applying = [(gain, offset) for start, gain, offset in steps if start <= ts]
    if not applying:
        return raw
    gain, offset = applying[-1]
    return gain * raw + offset


def test_each_item_gets_the_step_of_its_own_time() -> None:
    rng = random.Random(20261209)
    for trial in range(200):
        histories = {uuid.uuid4().bytes: _steps(rng) for _ in range(rng.randint(1, 4))}
        plain = uuid.uuid4().bytes
        keys = [*histories, plain]
        n = rng.randint(1, 80)
        sensors = [rng.choice(keys) for _ in range(n)]
        # Some steps' own instants, and a microsecond before them: the edges of a step.
        edges = [start for steps in histories.values() for start, _, _ in steps]
        times = [
            rng.choice(edges) - timedelta(microseconds=rng.choice([0, 1]))
            if rng.random() < 0.3
            else NOW - timedelta(seconds=rng.randint(0, 3 * 86_400))
            for _ in range(n)
        ]
        # Any offset: a step and a reading are compared as instants.
        times = [t.astimezone(rng.choice([UTC, PLUS_2])) for t in times]
        values = [rng.uniform(0, 1000) for _ in range(n)]
        cols = Columns(sensors, times, values, [100] * n, [None] * n)
        # In any order, as the database hands them over.
        calibrations = {
            key: Calibration.of(*zip(*rng.sample(steps, len(steps)), strict=True))
            for key, steps in histories.items()
        }
        done = calibrate(cols, calibrations)
        # Untouched (no raws) when no item is of a calibrated sensor.
        assert done.raws == (values if set(sensors) & histories.keys() else None), trial
        assert done.values == [
            _expected(histories.get(key, []), ts, raw)
            for key, ts, raw in zip(sensors, times, values, strict=True)
        ], trial


def test_the_batch_wide_and_item_by_item_checks_agree_on_calibrated_items() -> None:
    sensor = uuid.uuid4()
    spec = SensorSpec(
        "%", 0.0, 100.0, calibration=Calibration.of([NOW - timedelta(days=1)], [0.1], [0.0])
    )
    batch = [
        ReadingIn(sensor_id=sensor, ts=NOW - timedelta(hours=1), value=500.0),
        ReadingIn(sensor_id=sensor, ts=NOW - timedelta(hours=2), value=1500.0),
        ReadingIn(sensor_id=sensor, ts=(NOW - timedelta(hours=3)).replace(tzinfo=None), value=5.0),
        ReadingIn(sensor_id=sensor, ts=NOW - timedelta(days=2), value=50.0),  # before the step
    ]
    fast = check_items(batch, {sensor: spec}, NOW, RETENTION)
    slow = check_each(batch, {sensor: spec}, Window.of(NOW, RETENTION, 50))
    assert fast == slow
    assert (fast.accepted.values, fast.accepted.raws) == ([50.0, 50.0], [500.0, 50.0])
    assert [(r.index, r.reason) for r in fast.rejected] == [
        (1, QuarantineReason.out_of_range),
        (2, QuarantineReason.invalid_timestamp),
    ]
    # The quarantined item is kept as sent.
    assert fast.rejected[0].raw["value"] == 1500.0
    assert "calibrated from the raw value 1500.0" in fast.rejected[0].detail
    # A value the gain carries past any float is out of range, not an error.
    huge = [ReadingIn(sensor_id=sensor, ts=NOW, value=1e308)]
    wide = SensorSpec(
        "%", 0.0, 100.0, calibration=Calibration.of([NOW - timedelta(days=1)], [1e6], [0.0])
    )
    (rejected,) = check_items(huge, {sensor: wide}, NOW, RETENTION).rejected
    assert (rejected.reason, rejected.raw["value"]) == (QuarantineReason.out_of_range, 1e308)


def test_calibrated_rows_copy_their_raw_values_as_a_fifth_column() -> None:
    sensor = uuid.uuid4()
    items = [
        ReadingIn(sensor_id=sensor, ts=NOW - timedelta(minutes=m), value=float(m))
        for m in (3, 1, 2, 1)
    ]
    spec = SensorSpec(
        "%", 0.0, 100.0, calibration=Calibration.of([NOW - timedelta(days=1)], [2.0], [1.0])
    )
    rows = encode(check_items(items, {sensor: spec}, NOW, RETENTION).accepted)
    # Sorted by time, the repeat dropped (the first sent kept), raw values alongside.
    assert rows.table["value"].tolist() == [7.0, 5.0, 3.0]
    assert rows.raw is not None
    assert rows.raw.tolist() == [3.0, 2.0, 1.0]
    assert rows.columns == ("sensor_id", "ts", "value", "quality", "raw_value")
    data = rows.copy_data()
    assert len(data) == 19 + 3 * 64 + 2
    assert encode(items).columns == ("sensor_id", "ts", "value", "quality")
