"""A split watering ends together: a run of it that will never run (skipped, superseded,
cancelled) ends every run after it in the watering's chain, in the same transaction.
Otherwise the next one would start at once (its predecessor is over) without the soak the
plan put before it, and a threshold rule re-armed by the skip could not ask again until
the rest had run. A watering that is not split (one run per pump) ends nothing: its other
pumps still water, as they always did."""

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.automation.cycles import label
from irrigation.automation.decisions import about, record
from irrigation.automation.models import Outcome, Reason, RunRequest, RunStatus


async def end_later_cycles(
    session: AsyncSession, ended: RunRequest, status: RunStatus, now: datetime
) -> list[RunRequest]:
    """Resolve the waiting runs after `ended` in its watering's chain (`after_id`) with
    `status`, reason `watering_ended`; a decision for each, except for a person's cancel
    (which writes none)."""
    if ended.watering_id is None:
        return []
    # The whole chain, finished links too (a superseded pump's cycles are resolved already,
    # and the other pumps' cycles after them still wait): at most 2 x 48 rows a pump.
    chain = (
        await session.execute(
            select(RunRequest.id, RunRequest.after_id, RunRequest.status, RunRequest.cycles).where(
                RunRequest.watering_id == ended.watering_id
            )
        )
    ).all()
    if max((row.cycles or 1 for row in chain), default=1) < 2:
        return []
    following = {row.after_id: row for row in chain if row.after_id is not None}
    later: list[uuid.UUID] = []
    cursor = following.get(ended.id)
    while cursor is not None:
        if cursor.status == RunStatus.waiting:
            later.append(cursor.id)
        cursor = following.get(cursor.id)
    if not later:
        return []
    locked = list(
        (
            await session.execute(
                select(RunRequest)
                .where(RunRequest.id.in_(later), RunRequest.status == RunStatus.waiting)
                .order_by(RunRequest.id)  # one order for every multi-row lock
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalars()
    )
    what = label(ended.cycle, ended.cycles) or "a run"
    why = ended.last_reason or str(status)
    for request in locked:
        request.status = status
        request.resolved_at = now
        request.last_reason = Reason.watering_ended
        if status == RunStatus.cancelled:
            continue
        outcome = Outcome.superseded if status == RunStatus.superseded else Outcome.skipped
        record(
            session,
            about(request),
            now,
            outcome,
            Reason.watering_ended,
            f"{label(request.cycle, request.cycles) or 'the run'} will not run: {what} of "
            f"the watering was {status} ({why})",
            detail={
                "cycle": request.cycle,
                "cycles": request.cycles,
                "ended_by": str(ended.id),
                "ended_by_reason": why,
            },
        )
    await session.flush()
    return locked
