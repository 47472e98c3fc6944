"""Reviewed quarantined items (approved or rejected) are kept for
`IRRIGATION_QUARANTINE_REVIEWED_RETENTION_DAYS` after their review, then deleted by an
hourly cron in bounded chunks, oldest review first, each chunk its own short transaction.
Pending items stay until reviewed: the site's quota `max_pending_quarantine` bounds them."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from irrigation.common.clock import utcnow
from irrigation.common.worker_context import worker_context

CHUNK_ROWS = 5_000
MAX_CHUNKS = 100  # a run stays well inside the worker's job timeout; the next goes on

_REVIEWED = """
DELETE FROM quarantined_readings WHERE id IN (
    SELECT id FROM quarantined_readings
    WHERE review_status <> 'pending' AND reviewed_at < :cutoff
    ORDER BY reviewed_at
    LIMIT :chunk
)
"""


async def purge_reviewed(
    sessions: async_sessionmaker[AsyncSession], cutoff: datetime, chunk_rows: int = CHUNK_ROWS
) -> int:
    """Delete items reviewed before `cutoff`, oldest review first; returns how many."""
    deleted = 0
    for _ in range(MAX_CHUNKS):
        async with sessions() as session, session.begin():
            result: Any = await session.execute(
                text(_REVIEWED), {"cutoff": cutoff, "chunk": chunk_rows}
            )
        deleted += result.rowcount
        if result.rowcount < chunk_rows:
            break
    return deleted


async def purge_reviewed_quarantine(ctx: dict[str, Any]) -> int:
    """arq cron job: one bounded pass over the reviewed items past their retention."""
    jc = worker_context(ctx)
    cutoff = utcnow() - timedelta(days=jc.settings.quarantine_reviewed_retention_days)
    return await purge_reviewed(jc.sessions, cutoff)
