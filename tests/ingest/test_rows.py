"""The batch's binary rows: one per (sensor, instant), the first sent kept, sorted by
sensor then time (before 2000 too), and rollups that add up."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from irrigation.ingest.rows import (
    PG_EPOCH,
    ROW,
    TAIL,
    Rows,
    by_sensor,
    decode_tail,
    encode,
    latest,
    rollups,
)


def rows_of(encoded: Rows) -> list[bytes]:
    return [encoded.row(i) for i in range(len(encoded))]


def reading(sensor: uuid.UUID, ts: datetime, value: float, quality: int = 100) -> SimpleNamespace:
    return SimpleNamespace(sensor_id=sensor, ts=ts, value=value, quality=quality)


def test_rows_are_unique_per_instant_the_first_sent_kept_and_sorted() -> None:
    a, b = sorted([uuid.uuid4(), uuid.uuid4()], key=lambda u: u.bytes)
    t = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    encoded = encode(
        [
            reading(b, t + timedelta(seconds=1), 3.0),
            reading(a, t, 1.0, 90),
            reading(a, t.astimezone(plus_two), 9.0),  # the same instant, another offset
            reading(b, t, 2.0),
            reading(a, t - timedelta(microseconds=1), 0.5),
        ]
    )
    assert encoded.repeats == 1
    decoded = [
        (sensor, *decode_tail(row[TAIL]))
        for sensor, start, end in by_sensor(encoded)
        for row in rows_of(encoded)[start:end]
    ]
    assert decoded == [
        (a, t - timedelta(microseconds=1), 0.5, 100),
        (a, t, 1.0, 90),
        (b, t, 2.0, 100),
        (b, t + timedelta(seconds=1), 3.0, 100),
    ]
    assert latest(encoded) == ([a, b], [t, t + timedelta(seconds=1)])


def test_instants_before_2000_sort_before_later_ones() -> None:
    sensor = uuid.uuid4()
    times = [datetime(y, 6, 1, tzinfo=UTC) for y in (2001, 1999, 1970, 2000)]
    encoded = encode([reading(sensor, ts, 1.0) for ts in times])
    assert [decode_tail(row[TAIL])[0] for row in rows_of(encoded)] == sorted(times)
    assert latest(encoded) == ([sensor], [max(times)])


def test_each_row_is_postgresqls_binary_tuple() -> None:
    sensor = uuid.uuid4()
    ts = datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC)
    (row,) = rows_of(encode([reading(sensor, ts, 2.5, 77)]))
    assert ROW.unpack(row) == (4, 16, sensor.bytes, 8, 1_000_000, 8, 2.5, 2, 77)


def test_rollups_per_sensor_and_utc_hour() -> None:
    a, b = sorted([uuid.uuid4(), uuid.uuid4()], key=lambda u: u.bytes)
    h = datetime(2026, 5, 1, 10, tzinfo=UTC)
    encoded = encode(
        [
            reading(a, h + timedelta(minutes=59, seconds=59), 4.0),
            reading(a, h, 1.0),
            reading(a, h + timedelta(hours=1), 10.0),
            reading(b, h + timedelta(minutes=30), -2.0),
            reading(a, h + timedelta(minutes=5), 7.0),
            reading(a, h + timedelta(minutes=5), 70.0),  # a repeat: never counted
        ]
    )
    roll = rollups(encoded)
    assert list(
        zip(
            roll.sensor_ids, roll.buckets, roll.counts, roll.sums, roll.mins, roll.maxs, strict=True
        )
    ) == [
        (a, h, 3, 12.0, 1.0, 7.0),
        (a, h + timedelta(hours=1), 1, 10.0, 10.0, 10.0),
        (b, h, 1, -2.0, -2.0, -2.0),
    ]


def test_times_are_exact_whatever_the_zones_of_a_batch() -> None:
    sensor = uuid.uuid4()
    utc = [datetime(2026, 3, 29, 0, 30, tzinfo=UTC) + timedelta(hours=h) for h in range(4)]
    berlin = ZoneInfo("Europe/Berlin")  # 2026-03-29 01:00 UTC: clocks go 02:00 -> 03:00
    for zone in (UTC, timezone(timedelta(hours=-3, minutes=-30)), berlin):
        encoded = encode([reading(sensor, ts.astimezone(zone), 1.0) for ts in utc])
        assert [decode_tail(row[TAIL])[0] for row in rows_of(encoded)] == utc, zone
        micros = [(ts - PG_EPOCH) // timedelta(microseconds=1) for ts in utc]
        assert encoded.micros.tolist() == micros
