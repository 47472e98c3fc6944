"""A batch of accepted readings as PostgreSQL binary COPY rows, made once per batch and used
by every step that writes it: the COPY itself, the hourly rollups, `last_seen_at` and the
Redis hot cache.

Each row is the COPY tuple `(sensor_id uuid, ts timestamptz, value float8, quality int2)`
in PostgreSQL's binary format (52 bytes), the batch's rows one numpy array of them, so
that nothing is done row by row in Python. `value` is the calibrated value; a batch with
calibrated readings also carries their values as sent (`Rows.raw`), copied as a fifth
column, `raw_value`, only then. Rows are unique per key (sensor, instant; the
first sent wins, as a re-sent reading is a duplicate) and sorted by it, so per sensor they
run oldest to newest, and concurrent batches lock index pages and rollup rows in one
order."""

import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import repeat
from operator import attrgetter, is_, sub
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000

ROW = struct.Struct(">hi16siqidih")
ROW_BYTES = ROW.size
ROW_DTYPE = np.dtype(
    [
        ("fields", ">i2"),
        ("sensor_len", ">i4"),
        ("sensor", "V16"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
        ("quality_len", ">i4"),
        ("quality", ">i2"),
    ]
)
"""ROW as a numpy record: a batch is packed, sorted and sliced as one array."""
assert ROW_DTYPE.itemsize == ROW_BYTES
COLUMNS = ("sensor_id", "ts", "value", "quality")
# A row of a batch with calibrated readings: ROW, then `raw_value` (float8). Made only for
# the COPY; everything else (rollups, cache, events) reads the calibrated ROW.
RAW_ROW_DTYPE = np.dtype([*ROW_DTYPE.descr, ("raw_len", ">i4"), ("raw", ">f8")])
RAW_COLUMNS = (*COLUMNS, "raw_value")
RowTable = npt.NDArray[np.void]
TAIL = slice(22, None)
"""From the length word of `ts` to the end: what the hot cache keeps of a row."""
T = TypeVar("T")
TAIL_FORMAT = struct.Struct(">4xq4xd4xh")
TAIL_BYTES = TAIL_FORMAT.size
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
COPY_TRAILER = b"\xff\xff"


class Reading(Protocol):
    @property
    def sensor_id(self) -> uuid.UUID: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def value(self) -> float: ...
    @property
    def quality(self) -> int: ...


@dataclass(frozen=True)
class Columns:
    """The typed items of a batch as columns, in the order sent: what the batch-wide checks
    and `encode` read. A clean batch is parsed straight into these, with no object per
    item beyond its values (validation.parse_batch)."""

    sensors: list[bytes]
    """Each item's sensor id as its 16 bytes (one shared object per sensor)."""
    times: list[datetime]
    values: list[float]
    qualities: list[int]
    units: list[str | None]
    raws: list[float] | None = None
    """The values as sent, when a calibration changed `values` (calibration.calibrate)."""
    micros: npt.NDArray[np.int64] | None = field(default=None, compare=False)
    """Each item's time in microseconds since 2000, when the calibration has computed it
    already (then `encode` does not again: it is its costliest step)."""

    @classmethod
    def of(cls, readings: Sequence[Reading]) -> "Columns":
        return cls(
            [r.sensor_id.bytes for r in readings],
            [r.ts for r in readings],
            [r.value for r in readings],
            [r.quality for r in readings],
            # Only items as sent have a unit (checked, never stored).
            [getattr(r, "unit", None) for r in readings],
        )

    def __len__(self) -> int:
        return len(self.sensors)

    def take(self, indices: list[int]) -> "Columns":
        """The items at these positions (the accepted ones of a batch with bad items)."""
        if len(indices) == len(self):
            return self
        return Columns(
            _pick(self.sensors, indices),
            _pick(self.times, indices),
            _pick(self.values, indices),
            _pick(self.qualities, indices),
            _pick(self.units, indices),
            None if self.raws is None else _pick(self.raws, indices),
            None if self.micros is None else self.micros[indices],
        )


def _pick(values: list[T], indices: list[int]) -> list[T]:
    return [values[i] for i in indices]


@dataclass(frozen=True)
class Rows:
    table: RowTable
    """The rows as one array of PostgreSQL's binary tuples (ROW_DTYPE), in key order."""
    repeats: int = 0
    """Items dropped as repeats of an earlier item of the batch (same sensor and instant)."""
    runs: list[tuple[bytes, int, int]] = field(default_factory=list)
    """(sensor id bytes, start, end): each sensor's rows are table[start:end]."""
    raw: npt.NDArray[np.float64] | None = None
    """The rows' values as sent, in row order, when a calibration changed some of them."""

    def __len__(self) -> int:
        return len(self.table)

    @cached_property
    def sensor_ids(self) -> list[uuid.UUID]:
        """The runs' sensors as UUIDs, made once: the rollups, last_seen_at and the cache
        each walk the runs."""
        return [uuid.UUID(bytes=sensor) for sensor, _, _ in self.runs]

    @cached_property
    def micros(self) -> npt.NDArray[np.int64]:
        """Each row's time in microseconds since 2000, in native byte order."""
        return self.table["ts"].astype(np.int64)

    @cached_property
    def _tails(self) -> npt.NDArray[np.uint8]:
        return self.table.view(np.uint8).reshape(len(self.table), ROW_BYTES)[:, TAIL]

    def tails(self, start: int, end: int) -> bytes:
        """Rows start..end from the length word of `ts` on, one after another: what the hot
        cache keeps of them."""
        return self._tails[start:end].tobytes()

    def row(self, index: int) -> bytes:
        return self.table[index : index + 1].tobytes()

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns `copy_data` fills, in its order."""
        return COLUMNS if self.raw is None else RAW_COLUMNS

    def copy_data(self) -> bytes:
        table = self.table
        if self.raw is not None:
            table = np.empty(len(self.table), RAW_ROW_DTYPE)
            # The 52 bytes of each row at once, then the fifth field.
            table.view(np.uint8).reshape(len(table), -1)[:, :ROW_BYTES] = self.table.view(
                np.uint8
            ).reshape(len(table), ROW_BYTES)
            table["fields"] = 5
            table["raw_len"] = 8
            table["raw"] = self.raw
        return b"".join((COPY_HEADER, table.data, COPY_TRAILER))


@dataclass(frozen=True)
class Rollups:
    """The hourly rollup rows of a batch, as columns for one `unnest` statement."""

    sensor_ids: list[uuid.UUID]
    buckets: list[datetime]
    counts: list[int]
    sums: list[float]
    mins: list[float]
    maxs: list[float]


def encode(batch: Columns | Sequence[Reading]) -> Rows:
    # Whole columns at a time: a loop over 10,000 items in Python cost ~15 ms a batch, and
    # struct.pack per row with a dict of keys to drop repeats 6 - 9 ms; these array
    # operations ~2, besides the times (docs/benchmarks.md).
    cols = batch if isinstance(batch, Columns) else Columns.of(batch)
    n = len(cols)
    if not n:
        return Rows(np.empty(0, ROW_DTYPE))
    distinct = sorted(set(cols.sensors))
    rank = {sensor: i for i, sensor in enumerate(distinct)}
    sensors = np.fromiter(map(rank.__getitem__, cols.sensors), np.intp, n)
    micros = cols.micros if cols.micros is not None else micros_of(cols.times)
    # Stable: of the items of one key, the first sent comes first, and is the one kept.
    order = np.lexsort((micros, sensors))
    sensors, micros = sensors[order], micros[order]
    first = np.empty(n, np.bool_)
    first[0] = True
    np.not_equal(micros[1:], micros[:-1], out=first[1:])
    first[1:] |= sensors[1:] != sensors[:-1]
    kept, sensors = order[first], sensors[first]
    table = np.empty(len(kept), ROW_DTYPE)
    table["fields"] = 4
    table["sensor_len"] = 16
    table["ts_len"] = 8
    table["value_len"] = 8
    table["quality_len"] = 2
    table["sensor"] = np.frombuffer(b"".join(distinct), "V16")[sensors]
    table["ts"] = micros[first]
    table["value"] = np.array(cols.values, np.float64)[kept]
    table["quality"] = np.array(cols.qualities, np.int16)[kept]
    raw = None if cols.raws is None else np.array(cols.raws, np.float64)[kept]
    # Every sensor has a row: its run ends where the next rank starts.
    ends = np.searchsorted(sensors, np.arange(len(distinct)), side="right").tolist()
    runs = list(zip(distinct, [0, *ends[:-1]], ends, strict=True))
    return Rows(table, n - len(kept), runs, raw)


def micros_of(times: list[datetime]) -> npt.NDArray[np.int64]:
    """Each time in microseconds since 2000 (aware times only)."""
    zone = times[0].tzinfo if times else None
    # A batch in one fixed offset (pydantic shares one tzinfo object per offset; checked by
    # identity, as hashing 10,000 tzinfo objects cost more than it saves): datetimes of the
    # same tzinfo subtract without calling utcoffset(), 2 ms a batch instead of 9. A zone
    # with rules has no offset without a date (None) and takes the general way.
    epoch = PG_EPOCH
    if (
        zone is not None
        and zone.utcoffset(None) is not None
        and all(map(is_, map(attrgetter("tzinfo"), times), repeat(zone)))
    ):
        epoch = PG_EPOCH.astimezone(zone)
    n = len(times)
    # Each timedelta's parts read in C and summed by numpy: dividing by a microsecond did
    # the same sum in Python ints, 2.5 ms a batch instead of 1.6.
    deltas = list(map(sub, times, repeat(epoch, n)))
    days = np.fromiter(map(attrgetter("days"), deltas), np.int64, n)
    seconds = np.fromiter(map(attrgetter("seconds"), deltas), np.int64, n)
    micros = np.fromiter(map(attrgetter("microseconds"), deltas), np.int64, n)
    return (days * 86_400 + seconds) * 1_000_000 + micros


def by_sensor(rows: Rows) -> Iterator[tuple[uuid.UUID, int, int]]:
    """Each sensor, and where its rows (oldest first) start and end."""
    for sensor_id, (_, start, end) in zip(rows.sensor_ids, rows.runs, strict=True):
        yield sensor_id, start, end


def decode_tail(tail: bytes) -> tuple[datetime, float, int]:
    """(ts, value, quality) from the part of a row the hot cache keeps."""
    us, value, quality = TAIL_FORMAT.unpack(tail)
    return PG_EPOCH + timedelta(microseconds=us), value, quality


def rollups(rows: Rows) -> Rollups:
    """count, sum, min and max per sensor and UTC hour: each sensor's rows run from old to
    new, so each (sensor, hour) is a run of consecutive rows."""
    if not rows:
        return Rollups([], [], [], [], [], [])
    hours = rows.micros // HOUR_US
    sensor = np.repeat(np.arange(len(rows.runs)), [end - start for _, start, end in rows.runs])
    changes = (hours[1:] != hours[:-1]) | (sensor[1:] != sensor[:-1])
    starts = np.concatenate(([0], np.flatnonzero(changes) + 1))
    values = rows.table["value"].astype(np.float64)
    ids = rows.sensor_ids
    return Rollups(
        [ids[i] for i in sensor[starts].tolist()],
        [PG_EPOCH + timedelta(microseconds=h * HOUR_US) for h in hours[starts].tolist()],
        np.diff(starts, append=len(rows)).tolist(),
        np.add.reduceat(values, starts).tolist(),
        np.minimum.reduceat(values, starts).tolist(),
        np.maximum.reduceat(values, starts).tolist(),
    )


def latest(rows: Rows) -> tuple[list[uuid.UUID], list[datetime]]:
    """Each sensor's newest time in the batch, as columns."""
    newest = rows.micros[[end - 1 for _, _, end in rows.runs]].tolist() if rows else []
    return list(rows.sensor_ids), [PG_EPOCH + timedelta(microseconds=us) for us in newest]
