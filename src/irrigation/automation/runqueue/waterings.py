"""A watering's cycles end together: a cycle that will never run (skipped, superseded,
cancelled) ends the watering's later cycles, in the same transaction. Otherwise the next
cycle would start at once (its predecessor is over) without the soak the plan put before
it, and a threshold rule re-armed by the skip could not ask again until the rest had run."""

from datetime import datetime

from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.automation.cycles import label
from irrigation.automation.decisions import about, record
from irrigation.automation.models import Outcome, Reason, RunRequest, RunStatus

# Written into the statement, as the dispatcher's: the partial index needs the constant.
_WAITING = literal(RunStatus.waiting.value, literal_execute=True)


async def end_later_cycles(
    session: AsyncSession, ended: RunRequest, status: RunStatus, now: datetime
) -> list[RunRequest]:
    """Resolve the waiting cycles of `ended`'s watering that come after its cycle (of every
    pump; the other pumps' runs of the same cycle still run) with `status`, reason
    `watering_ended`; a decision for each, except for a person's cancel (which writes none).
    A run that is not one of several cycles ends nothing."""
    if ended.watering_id is None or ended.cycle is None or (ended.cycles or 1) < 2:
        return []
    later = list(
        (
            await session.execute(
                select(RunRequest)
                .where(
                    RunRequest.watering_id == ended.watering_id,
                    RunRequest.status == _WAITING,
                    RunRequest.cycle > ended.cycle,
                    RunRequest.id != ended.id,
                )
                .order_by(RunRequest.cycle, RunRequest.position)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalars()
    )
    what = label(ended.cycle, ended.cycles)
    why = ended.last_reason or str(status)
    for request in later:
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
            f"{label(request.cycle, request.cycles)} will not run: {what} of the watering "
            f"was {status} ({why})",
            detail={
                "cycle": request.cycle,
                "cycles": request.cycles,
                "ended_by": str(ended.id),
                "ended_by_reason": why,
            },
        )
    await session.flush()
    return later
