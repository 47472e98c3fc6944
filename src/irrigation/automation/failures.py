"""One row that raises never stops the others.

The schedule firer, rule evaluation and the run-queue dispatcher each process their rows
one by one, each in its own transaction. A row whose processing raises (whatever the
exception) is logged with its id, counted (`failures`) and not tried again before
`retry_at` (base * 2^(n-1), capped): the loops' queries skip it until then, so a row that
always raises can neither be retried at once nor keep the head of a batch. Its zone's
decision history says it was held back (`row_failed`), without the exception's text. The
alerts evaluator reads `failures` and raises `automation_failure` for the site; the next
attempt that goes through resets the count, which clears it."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation.automation.decisions import Subject, about, record
from irrigation.automation.models import (
    Outcome,
    Reason,
    RunRequest,
    RunStatus,
    Schedule,
    ThresholdRule,
)
from irrigation.common.clock import db_now_expr
from irrigation.settings import Settings

log = structlog.get_logger(__name__)

Model = type[Schedule] | type[ThresholdRule] | type[RunRequest]
Kind = Literal["schedule", "threshold rule", "run request"]


def backoff(settings: Settings, failures: int) -> timedelta:
    """The wait after the `failures`-th failure in a row."""
    seconds = settings.automation_retry_base_s * 2 ** min(failures - 1, 30)
    return timedelta(seconds=min(seconds, settings.automation_retry_max_s))


def ready(model: Model, now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """Not backed off (any more) at `now` (a value, or a bound parameter for a statement
    built once)."""
    return or_(model.retry_at.is_(None), model.retry_at <= now)


async def failed(
    session: AsyncSession, settings: Settings, model: Model, row_id: uuid.UUID
) -> datetime | None:
    """Count a failure of the row and back it off; returns when it is tried again (None:
    the row is gone, or the request no longer waits). Never raises: the loop goes on."""
    kind: Kind = (
        "schedule"
        if model is Schedule
        else "threshold rule"
        if model is ThresholdRule
        else "run request"
    )
    try:
        async with session.begin():
            found: Any = await session.get(
                model, row_id, with_for_update=True, populate_existing=True
            )
            if found is None:
                return None
            row: Schedule | ThresholdRule | RunRequest = found
            if isinstance(row, RunRequest) and row.status != RunStatus.waiting:
                return None
            now = (await session.execute(select(db_now_expr()))).scalar_one()
            row.failures += 1
            row.retry_at = now + backoff(settings, row.failures)
            if isinstance(row, RunRequest):
                row.last_reason = Reason.row_failed
                subject = about(row)
            elif isinstance(row, Schedule):
                subject = Subject(row.site_id, row.zone_id, row.pump_id, schedule_id=row.id)
            else:
                subject = Subject(row.site_id, row.zone_id, row.pump_id, rule_id=row.id)
            # In UTC, not the zone's time: formatting must not be what fails again here.
            again = row.retry_at.astimezone(UTC)
            record(
                session,
                subject,
                now,
                Outcome.deferred,
                Reason.row_failed,
                f"the {kind} could not be processed (failure {row.failures} in a row); "
                f"tried again from {again:%Y-%m-%d %H:%M:%S} UTC",
                detail={"failures": row.failures, "retry_at": again.isoformat()},
            )
            return row.retry_at
    except Exception:  # the database itself is failing: the next pass tries again
        log.exception("row_failure_not_recorded", kind=kind, row_id=str(row_id))
        return None


async def recovered(session: AsyncSession, model: Model, row_id: uuid.UUID) -> None:
    """The row went through after failing: its count is reset (which clears the alert)."""
    async with session.begin():
        await session.execute(
            update(model)
            .where(model.id == row_id, model.failures > 0)
            .values(failures=0, retry_at=None)
        )
