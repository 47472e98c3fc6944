"""History of the automation (decisions, finished run requests) is kept for
`IRRIGATION_AUTOMATION_HISTORY_DAYS`, then deleted by an hourly cron in bounded chunks,
each its own short transaction (a schedule that fires every minute writes ~1,440
decisions a day)."""

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from irrigation.common.clock import utcnow
from irrigation.common.worker_context import worker_context

CHUNK_ROWS = 5_000
MAX_CHUNKS = 100  # a run stays well inside the worker's job timeout; the next goes on

_DECISIONS = """
DELETE FROM automation_decisions WHERE id IN (
    SELECT id FROM automation_decisions WHERE at < :cutoff LIMIT :chunk
)
"""
_RUN_REQUESTS = """
DELETE FROM run_requests WHERE id IN (
    SELECT id FROM run_requests
    WHERE status <> 'waiting' AND resolved_at < :cutoff LIMIT :chunk
)
"""


async def purge_automation_history(ctx: dict[str, Any]) -> int:
    jc = worker_context(ctx)
    cutoff = utcnow() - timedelta(days=jc.settings.automation_history_days)
    deleted = 0
    for statement in (_DECISIONS, _RUN_REQUESTS):
        for _ in range(MAX_CHUNKS):
            async with jc.sessions() as session, session.begin():
                result: Any = await session.execute(
                    text(statement), {"cutoff": cutoff, "chunk": CHUNK_ROWS}
                )
            deleted += result.rowcount
            if result.rowcount < CHUNK_ROWS:
                break
    return deleted
