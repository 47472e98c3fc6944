"""The decisions log: one row per start, deferral, skip or supersede, with a human sentence,
each also a live event (DecisionOut) once its transaction commits."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from irrigation import feed
from irrigation.automation.models import AutomationDecision, Outcome, Reason, RunRequest
from irrigation.automation.schemas import DecisionOut
from irrigation.common.errors import NotFound
from irrigation.common.pagination import PageParams, page_of, paginate
from irrigation.fleet.models import Zone


def local(moment: datetime, tz: str) -> str:
    """'2026-11-23 06:00 Europe/Berlin': how a grower reads a time.

    Never raises: an instant whose local reading falls outside datetime's years 1-9999
    (a pause until 9999-12-31T23:00Z read in Asia/Tokyo, stored before `until` was bounded)
    is written in UTC instead. One sentence that cannot be formatted once rolled back a
    schedule's advance and stopped the dispatcher for every site queued after it."""
    try:
        return f"{moment.astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M} {tz}"
    except OverflowError:
        utc = moment.astimezone(UTC)
        return f"{utc.year:04d}-{utc:%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class Subject:
    """What a decision is about; every field but the zone is optional."""

    site_id: uuid.UUID
    zone_id: uuid.UUID
    pump_id: uuid.UUID | None = None
    rule_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    run_request_id: uuid.UUID | None = None
    watering_id: uuid.UUID | None = None


def about(request: RunRequest) -> Subject:
    """A decision about a run request (its zone, pump, and the rule or schedule that asked)."""
    return Subject(
        site_id=request.site_id,
        zone_id=request.zone_id,
        pump_id=request.pump_id,
        rule_id=request.rule_id,
        schedule_id=request.schedule_id,
        run_request_id=request.id,
        watering_id=request.watering_id,
    )


def record(
    session: AsyncSession,
    subject: Subject,
    at: datetime,
    outcome: Outcome,
    reason: Reason,
    message: str,
    activation_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> AutomationDecision:
    decision = AutomationDecision(
        id=uuid.uuid4(),  # now, not at the flush: the event names it
        site_id=subject.site_id,
        zone_id=subject.zone_id,
        pump_id=subject.pump_id,
        rule_id=subject.rule_id,
        schedule_id=subject.schedule_id,
        run_request_id=subject.run_request_id,
        activation_id=activation_id,
        watering_id=subject.watering_id,
        at=at,
        outcome=outcome,
        reason=reason,
        message=f"{outcome}: {message}"[:1000],
        detail=detail or None,
    )
    session.add(decision)
    data = DecisionOut.model_validate(decision).model_dump(mode="json")
    feed.emit(session, feed.EventType.decision, subject.site_id, data, at)
    return decision


@dataclass(frozen=True)
class DecisionFilter:
    outcome: Outcome | None = None
    reason: str | None = None
    pump_id: uuid.UUID | None = None
    rule_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    watering_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_decisions(
    session: AsyncSession,
    site_id: uuid.UUID,
    zone_id: uuid.UUID,
    filters: DecisionFilter,
    params: PageParams,
) -> tuple[list[AutomationDecision], str | None]:
    zone = await session.execute(select(Zone.id).where(Zone.id == zone_id, Zone.site_id == site_id))
    if zone.first() is None:
        raise NotFound("zone not found")
    d = AutomationDecision
    stmt = select(d).where(d.zone_id == zone_id)
    for column, value in (
        (d.outcome, filters.outcome),
        (d.reason, filters.reason),
        (d.pump_id, filters.pump_id),
        (d.rule_id, filters.rule_id),
        (d.schedule_id, filters.schedule_id),
        (d.watering_id, filters.watering_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if filters.since is not None:
        stmt = stmt.where(d.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(d.at < filters.until)
    stmt = paginate(stmt, d.created_at, d.id, params, descending=True)
    return page_of((await session.execute(stmt)).scalars().all(), params)
