"""Raw-reading retention: readings older than `IRRIGATION_RAW_RETENTION_DAYS` are deleted
by an arq cron job in bounded chunks, each its own short transaction; the hourly rollups
stay, so aggregates of old ranges still answer.

Chunks walk the primary key (sensor_id, ts): per sensor, the oldest `chunk_rows` readings
before the cutoff. No lock is held between chunks, and ingestion never writes there (it
refuses readings older than the retention). A run stops after its time budget and the next
run goes on where it stopped. Chunked deletes against dropping monthly partitions:
measured in docs/architecture.md ("Aggregates and retention")."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.common.clock import utcnow
from irrigation.readings.queries import raw_horizon
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

CHUNK_ROWS = 5000
# Below the worker's 30 s job timeout on purpose: a SIGKILLed job is retried only after the
# longest timeout of any function on the worker, and pump jobs must come back quickly.
TIME_BUDGET_S = 20.0

_SENSORS_WITH_EXPIRED = """
SELECT s.id FROM sensors AS s
WHERE EXISTS (SELECT 1 FROM sensor_readings AS r WHERE r.sensor_id = s.id AND r.ts < :cutoff)
ORDER BY s.id
"""

# The chunk is a ts range of one sensor (its `chunk_rows`-th oldest expired reading is the
# upper bound), so the delete is one primary-key range scan; the same statement works on a
# table partitioned by ts. `after` starts each chunk past the previous one: the index
# entries of the rows just deleted stay until VACUUM, and walking them again on every
# chunk made 1,000-row chunks twice as slow as 5,000-row ones.
_DELETE_CHUNK = """
WITH gone AS (
    DELETE FROM sensor_readings
    WHERE sensor_id = :sensor_id AND ts > :after AND ts < :cutoff
      AND ts <= coalesce(
          (SELECT ts FROM sensor_readings
           WHERE sensor_id = :sensor_id AND ts > :after AND ts < :cutoff
           ORDER BY ts OFFSET :last LIMIT 1),
          'infinity')
    RETURNING ts
)
SELECT count(*) AS deleted, max(ts) AS last FROM gone
"""
NEVER = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Purge:
    deleted: int
    chunks: int
    is_complete: bool
    """False when the time budget ran out with expired readings left."""


async def purge_expired_readings(
    sessions: async_sessionmaker[AsyncSession],
    cutoff: datetime,
    *,
    chunk_rows: int = CHUNK_ROWS,
    budget_s: float = TIME_BUDGET_S,
) -> Purge:
    """Delete raw readings with `ts < cutoff`, oldest first per sensor, `chunk_rows` per
    committed transaction, until none is left or `budget_s` is spent (at least one chunk
    runs). Rollups are not touched."""
    deadline = time.monotonic() + budget_s
    async with sessions() as session:
        sensor_ids = list(
            (await session.execute(text(_SENSORS_WITH_EXPIRED), {"cutoff": cutoff})).scalars()
        )
    deleted = chunks = 0
    for sensor_id in sensor_ids:
        after = NEVER
        while True:
            async with sessions() as session, session.begin():
                count, last = (
                    await session.execute(
                        text(_DELETE_CHUNK),
                        {
                            "sensor_id": sensor_id,
                            "after": after,
                            "cutoff": cutoff,
                            "last": chunk_rows - 1,
                        },
                    )
                ).one()
            deleted += count
            chunks += 1
            after = last or after
            is_sensor_done = count < chunk_rows
            if time.monotonic() >= deadline:
                is_last = is_sensor_done and sensor_id == sensor_ids[-1]
                return Purge(deleted, chunks, is_complete=is_last)
            if is_sensor_done:
                break
    return Purge(deleted, chunks, is_complete=True)


class _WorkerContext(Protocol):
    """What the worker's startup puts in ctx["irrigation"] that this job needs."""

    @property
    def settings(self) -> Settings: ...

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...


async def purge_raw_readings(ctx: dict[str, Any]) -> int:
    """arq cron job: one bounded retention pass; returns how many readings it deleted."""
    context: _WorkerContext = ctx["irrigation"]
    cutoff = raw_horizon(utcnow(), context.settings.raw_retention_days)
    purge = await purge_expired_readings(context.sessions, cutoff)
    if purge.deleted or not purge.is_complete:
        log.info(
            "readings.retention",
            cutoff=cutoff.isoformat(),
            deleted=purge.deleted,
            chunks=purge.chunks,
            is_complete=purge.is_complete,
        )
    return purge.deleted
