"""The bulk write path: readings, the hourly rollups from the rows actually inserted, and
the sensors' last_seen_at, all in the caller's transaction.

Optimistic: a batch (already unique per key, see `rows`) is copied straight into
`sensor_readings` with binary COPY, and the rollups and last_seen_at follow in one
statement computed from the batch (`roll_up`, last before the commit). Only when the COPY
hits a stored reading (a re-sent batch) does the batch go, after a rollback to its
savepoint or of the whole transaction (`CopyMode`), through the temp table and
`INSERT ... ON CONFLICT DO NOTHING RETURNING`, whose returned rows feed the rollups. Raw
asyncpg, not the ORM: COPY and one round trip per statement (docs/benchmarks.md)."""

import dataclasses
import json
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.ingest import rows as batch_rows
from irrigation.ingest.rows import Rows
from irrigation.ingest.validation import Rejected

COLUMNS = batch_rows.COLUMNS
SAVEPOINT = "ingest_copy"
TEMP_TABLE = "ingest_rows"

CREATE_TEMP = f"""
CREATE TEMP TABLE IF NOT EXISTS {TEMP_TABLE}
    (sensor_id uuid, ts timestamptz, value float8, quality int2, raw_value float8)
    ON COMMIT DELETE ROWS
"""

# One lock order for every batch: the rollup rows in (sensor, bucket) order, then - only
# once all of them are held, which the count over `roll` waits for - the sensors in id
# order. Two batches of the same sensors then wait for each other instead of deadlocking
# (a deadlock costs PostgreSQL's deadlock_timeout, 1 s, before the retry); an UPDATE ...
# FROM locked the sensors in whatever order its join produced, which changes as rows move.
_ROLL = """roll AS (
    INSERT INTO reading_rollups_hourly AS r (sensor_id, bucket, count, sum, min, max)
    {rows}
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET
        count = r.count + EXCLUDED.count,
        sum = r.sum + EXCLUDED.sum,
        min = LEAST(r.min, EXCLUDED.min),
        max = GREATEST(r.max, EXCLUDED.max)
    RETURNING 1
), locked AS (
    SELECT s.id, m.latest
    FROM sensors AS s JOIN ({latest}) AS m(sensor_id, latest) ON s.id = m.sensor_id
    WHERE (SELECT count(*) FROM roll) >= 0
        -- Only the sensors this batch moves on: a batch of older readings locks none, so
        -- it never queues behind the newer ones (the test is made again after a wait).
        AND (s.last_seen_at IS NULL OR s.last_seen_at < m.latest)
    ORDER BY s.id
    FOR NO KEY UPDATE OF s
)"""
_SEEN = """UPDATE sensors AS s SET last_seen_at = GREATEST(s.last_seen_at, l.latest)
    FROM locked AS l
    WHERE s.id = l.id"""

ROLLUP_AND_SEEN = f"""
WITH {
    _ROLL.format(
        rows="SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::int8[], $4::float8[],"
        " $5::float8[], $6::float8[]) ORDER BY 1, 2",
        latest="SELECT * FROM unnest($7::uuid[], $8::timestamptz[])",
    )
}
{_SEEN}
"""

# `{{table}}`: sensor_readings, or a copy of it in the benchmarks.
INSERT_FROM_TEMP = f"""
WITH ins AS (
    INSERT INTO {{table}} (sensor_id, ts, value, quality, raw_value)
    SELECT sensor_id, ts, value, quality, raw_value FROM ingest_rows ORDER BY sensor_id, ts
    ON CONFLICT (sensor_id, ts) DO NOTHING
    RETURNING sensor_id, ts, value
), {
    _ROLL.format(
        rows="SELECT sensor_id, date_trunc('hour', ts, 'UTC'), count(*), sum(value), min(value),"
        " max(value) FROM ins GROUP BY 1, 2 ORDER BY 1, 2",
        latest="SELECT sensor_id, max(ts) FROM ins GROUP BY 1",
    )
}, seen AS (
    {_SEEN}
)
SELECT count(*) FROM ins
"""

# After the fallback, in its transaction: the temp table still holds the batch's keys.
SELECT_STORED = f"""
SELECT r.sensor_id, r.ts, r.value, r.quality
FROM {TEMP_TABLE} AS k JOIN sensor_readings AS r USING (sensor_id, ts)
"""

INSERT_QUARANTINE = """
INSERT INTO quarantined_readings
    (id, site_id, job_id, item_index, raw, sensor_id, reason, detail, review_status, created_at)
SELECT gen_random_uuid(), $1, $2, t.item_index, t.raw::jsonb, t.sensor_id, t.reason, t.detail,
       'pending', now()
FROM unnest($3::int[], $4::text[], $5::uuid[], $6::text[], $7::text[])
    AS t(item_index, raw, sensor_id, reason, detail)
"""


async def _driver(session: AsyncSession) -> Any:
    """The session's asyncpg connection, inside the session's transaction."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg dialect sends BEGIN with its own first statement; none has
        # run in this transaction yet, and a raw statement would run outside it (a COPY
        # without a savepoint would even commit on its own).
        await conn.exec_driver_sql("SELECT 1")
    return driver


@asynccontextmanager
async def _as_dbapi_errors(session: AsyncSession, statement: str) -> AsyncIterator[None]:
    """The raw driver's errors as SQLAlchemy's DBAPIError, like any other query's: the
    deadlock retry and the error handler (503 on a lock timeout) read their sqlstate, and
    would otherwise never see them."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise DBAPIError(statement, None, exc) from exc
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # The driver's own state broke, in practice with the connection: a COPY cut off by
        # a terminated backend leaves "another operation is in progress". The connection is
        # useless, so SQLAlchemy is told to throw it away rather than roll it back, and the
        # request is answered 503 `database_unavailable`.
        await (await session.connection()).invalidate(exc)
        raise DBAPIError(statement, None, exc, connection_invalidated=True) from exc


@dataclass(frozen=True)
class Inserted:
    count: int
    """How many readings were new."""
    stored: Rows
    """The rows as the database now holds them, for the hot cache: a duplicate may carry
    another value than the reading it lost to."""
    rolled_up: bool
    """False until `roll_up` has written the rollups and last_seen_at of a copied batch."""


class CopyMode(StrEnum):
    savepoint = "savepoint"
    """COPY inside a savepoint; on meeting stored readings, back to it and merge."""
    bare = "bare"
    """COPY with no savepoint (one round trip less); on meeting stored readings raise
    `StoredAlready`: the transaction is lost, and the caller runs it again to merge."""
    merge = "merge"
    """Straight to the temp table and `INSERT ... ON CONFLICT DO NOTHING`."""


class StoredAlready(Exception):
    """A bare COPY met readings already stored (a re-sent batch); the transaction is aborted."""


async def insert_readings(
    session: AsyncSession, rows: Rows, mode: CopyMode = CopyMode.savepoint
) -> Inserted:
    """The readings, within the session's transaction; `roll_up` must follow before the
    commit. Apart, so that a caller can leave the statement that locks what every batch of
    these sensors needs (rollup rows, sensors) for last, right before its COMMIT: with the
    job row written in between, concurrent batches of the same sensors queued on those
    locks for twice as long. Reading the stored rows takes a second query, only after
    duplicates: returning the keys from the insert itself made every batch 20-30 % slower."""
    if not rows:
        return Inserted(0, rows, True)
    driver = await _driver(session)
    async with _as_dbapi_errors(session, "COPY sensor_readings"):
        inserted, rolled_up = await insert_rows(driver, rows, mode=mode)
        if inserted == len(rows):
            return Inserted(inserted, rows, rolled_up)
        stored = await driver.fetch(SELECT_STORED)
    return Inserted(inserted, batch_rows.encode([_Stored(*row) for row in stored]), rolled_up)


async def roll_up(session: AsyncSession, inserted: Inserted) -> None:
    if inserted.rolled_up:
        return
    driver = await _driver(session)
    async with _as_dbapi_errors(session, "rollups and last_seen_at"):
        await roll_up_rows(driver, inserted.stored)


async def write_readings(session: AsyncSession, rows: Rows) -> Inserted:
    """`insert_readings`, then `roll_up` straight away."""
    inserted = await insert_readings(session, rows)
    await roll_up(session, inserted)
    return dataclasses.replace(inserted, rolled_up=True)


async def write_rows(conn: Any, rows: Rows, table: str = "sensor_readings") -> int:
    """The whole write on a raw asyncpg connection, inside its transaction (`table`: a copy
    of sensor_readings, for the benchmarks)."""
    inserted, rolled_up = await insert_rows(conn, rows, table)
    if not rolled_up:
        await roll_up_rows(conn, rows)
    return inserted


async def insert_rows(
    conn: Any, rows: Rows, table: str = "sensor_readings", mode: CopyMode = CopyMode.savepoint
) -> tuple[int, bool]:
    """How many were new, and whether their rollups and last_seen_at are written: the
    merging statement writes them, a plain COPY leaves them to `roll_up_rows`."""
    # A memoryview: asyncpg would take bytes for a file name.
    data = memoryview(rows.copy_data())
    columns = rows.columns
    if mode is CopyMode.merge:
        return await write_conflicting(conn, data, table, columns), True
    if mode is CopyMode.savepoint:
        await conn.execute(f"SAVEPOINT {SAVEPOINT}")
    try:
        await conn.copy_to_table(table, source=data, columns=columns, format="binary")
    except asyncpg.UniqueViolationError:
        if mode is CopyMode.bare:
            raise StoredAlready from None
        await conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        return await write_conflicting(conn, data, table, columns), True
    # Not released: the COMMIT ends it, and a RELEASE was one more round trip per batch.
    return len(rows), False


async def write_conflicting(
    conn: Any,
    data: memoryview,
    table: str = "sensor_readings",
    columns: Sequence[str] = COLUMNS,
) -> int:
    """Rows of which some are stored already: through a temp table and `ON CONFLICT DO
    NOTHING`, the rollups and last_seen_at from the rows it actually inserted."""
    await conn.execute(CREATE_TEMP)
    await conn.copy_to_table(TEMP_TABLE, source=data, columns=columns, format="binary")
    inserted: int = await conn.fetchval(INSERT_FROM_TEMP.format(table=table))
    return inserted


async def roll_up_rows(conn: Any, rows: Rows) -> None:
    roll = batch_rows.rollups(rows)
    await conn.execute(
        ROLLUP_AND_SEEN,
        roll.sensor_ids,
        roll.buckets,
        roll.counts,
        roll.sums,
        roll.mins,
        roll.maxs,
        *batch_rows.latest(rows),
    )


class _Stored(NamedTuple):
    sensor_id: uuid.UUID
    ts: datetime
    value: float
    quality: int


def _raw_json(raw: Any) -> str:
    return json.dumps(_storable(raw), default=str, allow_nan=False)


def _storable(raw: Any) -> Any:
    """The item as JSONB can hold it, still an object a reviewer can correct: NaN and
    Infinity become the strings the client wrote (JSON has no such numbers), NUL characters
    (refused by PostgreSQL) become U+FFFD."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return "NaN" if math.isnan(raw) else ("Infinity" if raw > 0 else "-Infinity")
    if isinstance(raw, str):
        return raw.replace("\x00", "\ufffd")
    if isinstance(raw, dict):
        return {_storable(str(key)): _storable(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return [_storable(value) for value in raw]
    return raw


async def insert_quarantine(
    session: AsyncSession,
    site_id: uuid.UUID | None,
    job_id: uuid.UUID,
    rejected: Sequence[Rejected],
) -> None:
    if not rejected:
        return
    driver = await _driver(session)
    async with _as_dbapi_errors(session, INSERT_QUARANTINE):
        await driver.execute(
            INSERT_QUARANTINE,
            site_id,
            job_id,
            [r.index for r in rejected],
            [_raw_json(r.raw) for r in rejected],
            [r.sensor_id for r in rejected],
            [r.reason.value for r in rejected],
            [_storable(r.detail[:500]) for r in rejected],
        )
